"""Fixtures for tests that run the add-on inside the real ``bpy`` module."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDON_ID = "gtr_reconstruct"
REPO_MODULE = "gtr_dev"
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"


class Addon:
    """The enabled extension: ``name`` is its module name; :meth:`part` imports one of its modules (looked up at
    call time, so it stays right after a test disabled and enabled the add-on)."""

    name = ADDON_MODULE

    def part(self, module: str):
        return importlib.import_module(f"{ADDON_MODULE}.{module}")


@pytest.fixture(scope="session")
def addon(tmp_path_factory) -> Addon:
    """The add-on enabled as an extension from a local repository (so its preferences work).

    The repository is a temp folder holding a link named after the extension id to ``blender_addon/``.
    """
    import addon_utils
    import bpy

    repo_dir = tmp_path_factory.mktemp("extensions")
    os.symlink(REPO_ROOT / "blender_addon", repo_dir / ADDON_ID, target_is_directory=True)
    repos = bpy.context.preferences.extensions.repos
    repo = repos.new(name=REPO_MODULE, module=REPO_MODULE, custom_directory=str(repo_dir), source="USER")
    errors = []
    module = addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=errors.append)
    assert module is not None, f"the add-on did not enable: {errors}"
    # the backend runs on this test session's interpreter (the venv install.py made, with the backend installed)
    bpy.context.preferences.addons[ADDON_MODULE].preferences.backend_python = sys.executable
    yield Addon()
    addon_utils.disable(ADDON_MODULE, default_set=True)
    repos.remove(repo)


@pytest.fixture
def clean_scene():
    """An empty scene (the home file without the default cube, camera and light; preferences and enabled add-ons
    stay); yields ``bpy.context.scene``."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    yield bpy.context.scene
