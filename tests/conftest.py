"""Shared test set-up: marker-based skips, the location of the shared data folder, and a hermetic Blender."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # Before anything imports bpy: Blender's user folders and caches go to a temp dir, never ~/.config/blender.
    blender_home = Path(tempfile.mkdtemp(prefix="gtr-tests-blender-"))
    os.environ["BLENDER_USER_RESOURCES"] = str(blender_home / "resources")
    os.environ["XDG_CACHE_HOME"] = str(blender_home / "cache")


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine several times faster than the default for tiny
    runs, and steadier."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_scene():
    """The procedural scene at 32² (5 training views, 1 test view): a real run of a few seconds."""
    from backend.synthetic import SceneConfig, make_scene

    return make_scene(SceneConfig(size=32, train_views=5, test_views=1, grid=48))


@pytest.fixture(scope="session")
def tiny_gtr_checkpoint(tmp_path_factory) -> Path:
    """A random-weight SMALL GTR model for 64² inputs, saved as this program's safetensors file, whose density
    crosses the mesh level in places (so it meshes)."""
    from dataclasses import replace

    import torch

    from backend.gtr.checkpoint import Weights, save_weights
    from backend.gtr.config import SMALL
    from backend.gtr.decoder import GTRField
    from backend.gtr.generator import Generator

    torch.manual_seed(0)
    config = replace(SMALL, input_size=64)
    generator, field = Generator(config.generator), GTRField(config.decoder)
    with torch.no_grad():
        # σ of this random model lies in about [0.62, 0.71]; this bias puts the 0.74 level near its 90th percentile.
        field.decoder.field.mlp_sigma.layers[-1].bias += 0.135
    weights = Weights(dict(generator.state_dict()), dict(field.state_dict()), config, "random")
    return save_weights(weights, tmp_path_factory.mktemp("gtr") / "tiny.safetensors")
