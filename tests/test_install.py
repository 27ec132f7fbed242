"""install.py: the ``--dev`` decision about bpy, and the add-on's extension zip built with Blender's own builder
(the one inside the bpy wheel) and installed into a Blender session, which then offers the recorded interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import install

REPO_ROOT = Path(__file__).resolve().parent.parent
EXTENSION_MODULE = f"bl_ext.{install.EXTENSION_REPO}.{install.extension_id()}"


# ---------------------------------------------------------------------------------------------------------- bpy plan


def test_dev_installs_bpy_on_python_311_only():
    wanted, why = install.bpy_plan("3.11.7", dev=True, no_bpy=False)
    assert wanted and "3.11.7" in why

    for version in ("3.10.14", "3.12.3", "3.13.0"):
        wanted, why = install.bpy_plan(version, dev=True, no_bpy=False)
        assert not wanted
        assert why.startswith("SKIPPED") and "tests marked `blender` will be skipped" in why
        assert version in why and "Python 3.11" in why and "python3.11 install.py --dev" in why


def test_bpy_only_with_dev_and_not_with_no_bpy():
    assert install.bpy_plan("3.11.7", dev=False, no_bpy=False)[0] is False
    wanted, why = install.bpy_plan("3.11.7", dev=True, no_bpy=True)
    assert not wanted and "--no-bpy" in why


def test_the_bpy_decision_is_part_of_the_stamp():
    options = {"dev": True, "root": str(REPO_ROOT), "python": "3.11.7"}
    assert install.stamp_value({**options, "bpy": None}) != install.stamp_value({**options, "bpy": install.BPY_SPEC})


def test_a_blender_path_that_is_not_a_file_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(install.InstallError, match="no such file; pass the Blender executable"):
        install.find_blender(str(tmp_path / "blender"))


# ---------------------------------------------------------------------------------------------------------- zip


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    """The extension zip as ``install.py --blender-zip DIR`` builds it when no Blender is around: the add-on step
    run in a subprocess whose PATH holds only the venv's bin folder, so the builder inside the bpy wheel is used
    (unless a Blender sits in the OS's default install folder: then that one builds it, as install.py would)."""
    out_dir = tmp_path_factory.mktemp("dist")
    code = (
        "import sys, install; from pathlib import Path\n"
        "install.install_addon(Path(sys.executable), None, Path(sys.argv[1]))"
    )
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(out_dir)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    zips = list(out_dir.glob("*.zip"))
    assert len(zips) == 1, result.stdout
    return zips[0]


@pytest.mark.blender
def test_manifest_validates_with_blenders_builder():
    builder = install.bundled_builder(Path(sys.executable))
    assert builder is not None and builder.name == "blender_ext.py"
    result = subprocess.run(
        [sys.executable, str(builder), "validate", str(install.ADDON_SOURCE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.blender
def test_zip_holds_the_addon_and_the_backend_interpreter(addon_zip):
    source = install.ADDON_SOURCE
    expected = {
        path.relative_to(source).as_posix()
        for path in source.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not path.name.startswith(".")
        and path.name != install.PYTHON_PATH_FILE
    }
    with zipfile.ZipFile(addon_zip) as archive:
        names = set(archive.namelist())
        recorded = archive.read(install.PYTHON_PATH_FILE).decode("utf-8")
    assert {"__init__.py", "blender_manifest.toml", "protocol.py"} <= expected
    assert names == expected | {install.PYTHON_PATH_FILE}
    assert recorded == str(Path(sys.executable).absolute()) + "\n"


# Runs in a fresh Blender session (the bpy module): install the zip as Blender's "Install from Disk" does, then
# report whether the add-on is enabled, where it lives, and the interpreter its preferences offer.
_INSTALL_AND_REPORT = """
import json, sys
import bpy  # first: it puts addon_utils on sys.path
import addon_utils
name = sys.argv[2]
bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
module = sys.modules.get(name)
addon = bpy.context.preferences.addons.get(name)
print("REPORT " + json.dumps({
    "enabled": addon_utils.check(name)[1],
    "file": module.__file__ if module else None,
    "backend_python": addon.preferences.backend_python if addon and addon.preferences else None,
}))
"""


@pytest.mark.blender
def test_zip_installs_enabled_and_prefills_the_backend_interpreter(addon_zip, tmp_path):
    # A Blender of its own (user folders under tmp_path), so this test session's bpy state stays untouched.
    env = {
        **os.environ,
        "BLENDER_USER_RESOURCES": str(tmp_path / "resources"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [sys.executable, "-c", _INSTALL_AND_REPORT, str(addon_zip), EXTENSION_MODULE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    report = json.loads(lines[-1].split(" ", 1)[1])
    assert report["enabled"], result.stdout + result.stderr
    installed = Path(report["file"]).parent
    assert installed == tmp_path / "resources" / "extensions" / "user_default" / install.extension_id()
    assert (installed / install.PYTHON_PATH_FILE).is_file()
    assert report["backend_python"] == str(Path(sys.executable).absolute())
