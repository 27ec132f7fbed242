"""Shared test set-up: marker-based skips and the location of the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _bpy_available() -> bool:
    try:
        import bpy  # noqa: F401  (only imported when a collected test carries the ``blender`` marker)
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def pytest_collection_modifyitems(config, items):
    needs_gpu = any(item.get_closest_marker("gpu") for item in items)
    needs_bpy = any(item.get_closest_marker("blender") for item in items)
    skip_gpu = None if not needs_gpu or _cuda_available() else pytest.mark.skip(reason="needs CUDA (no GPU found)")
    skip_bpy = None if not needs_bpy or _bpy_available() else pytest.mark.skip(reason="needs the bpy module")
    for item in items:
        if skip_gpu is not None and item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)
        if skip_bpy is not None and item.get_closest_marker("blender"):
            item.add_marker(skip_bpy)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder: ``$GTR_SHARED_DATA``, else ``../shared/data`` beside the repository; skip if absent."""
    env = os.environ.get("GTR_SHARED_DATA")
    path = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder not found: {path} (set GTR_SHARED_DATA)")
    return path
