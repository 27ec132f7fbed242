"""The README's batch example, run as written: a saved .blend with two marked collections (an object to ring and
render, and cameras without images), the add-on installed into the user extensions, a separate Python process.
The good set becomes an object (with a UV texture packed into the saved file) and a GLB; the broken one is reported
and does not stop the run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.blender_addon.test_reconstruct import QUICK

pytestmark = [pytest.mark.blender, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def readme_batch_example() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- batch example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README lost its batch example"
    return match.group(1)


RUNNER = """
import os, sys
import bpy
import addon_utils
extensions = os.path.join(os.environ["BLENDER_USER_RESOURCES"], "extensions", "user_default")
os.makedirs(extensions, exist_ok=True)
os.symlink(sys.argv[3], os.path.join(extensions, "gtr_reconstruct"))
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])   # as `blender -b scene.blend`
assert addon_utils.enable("bl_ext.user_default.gtr_reconstruct", default_set=True) is not None
exec(compile(open(sys.argv[2]).read(), "reconstruct_all.py", "exec"))   # as `--python reconstruct_all.py`
"""


def _marked_scene(bpy, scene, folder: Path) -> Path:
    bpy.ops.mesh.primitive_cube_add(size=1.2, location=(0.3, 0.2, 0.6))
    cube = bpy.context.active_object
    material = bpy.data.materials.new("green")
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.1, 0.6, 0.1, 1.0)
    cube.data.materials.append(material)
    good = bpy.data.collections.new("Cube set")
    broken = bpy.data.collections.new("Broken set")
    for collection in (good, broken):
        scene.collection.children.link(collection)
        collection["gtr_reconstruct"] = True
    for c in cube.users_collection:
        c.objects.unlink(cube)
    good.objects.link(cube)
    for n in range(2):  # cameras without images
        camera = bpy.data.objects.new(f"Photo cam {n}", bpy.data.cameras.new(f"Photo cam {n}"))
        camera.location = (4.0, 0.0, 0.5 + n)
        broken.objects.link(camera)
    scene.render.resolution_x = scene.render.resolution_y = 128
    settings = scene.gtr
    settings.work_folder = str(folder / "jobs")
    settings.ring_count, settings.render_size, settings.render_samples = 10, 128, 4
    settings.extra_options = json.dumps(QUICK)
    settings.render_source = "ALBEDO"  # the scene has no light: the Diffuse Color pass still shows the green
    settings.texture, settings.texture_size = "uv", 256  # the UV path end to end (test_reconstruct: vertex colours)
    path = folder / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True)
    return path


def test_readme_batch_example_runs(addon, clean_scene, tmp_path):
    import bpy

    blend = _marked_scene(bpy, clean_scene, tmp_path)
    script = tmp_path / "reconstruct_all.py"
    script.write_text(readme_batch_example(), encoding="utf-8")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, str(blend), str(script), str(REPO_ROOT / "blender_addon")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output  # one set failed: the example's exit status says so
    assert "gtr batch: 1 of 2 set(s) reconstructed; failed: Broken set" in output
    assert re.search(r"Broken set FAILED view 1 \(Photo cam 0\): no image", output), output
    glb = tmp_path / "gtr_glb" / "Cube_set.glb"
    assert glb.is_file() and glb.read_bytes()[:4] == b"glTF"
    # the saved file holds the new object, on the cube
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    result, cube = bpy.data.objects["Cube set GTR"], bpy.data.objects["Cube"]
    assert len(result.data.polygons) > 100 and len(result.data.uv_layers) == 1
    texture = next(node for node in result.active_material.node_tree.nodes if node.type == "TEX_IMAGE")
    image = texture.image
    assert image.packed_file is not None and image.colorspace_settings.name == "sRGB"  # kept inside the .blend
    assert tuple(image.size) == (256, 256)
    pixels = np.empty(256 * 256 * 4, np.float32)
    image.pixels.foreach_get(pixels)
    # The texture holds sRGB values of the Diffuse Color pass, about 0.96 × the base colour (0.1, 0.6, 0.1):
    # sRGB (0.343, 0.783, 0.343). Linear values stored as sRGB would read about (0.10, 0.58, 0.10).
    median = np.median(pixels.reshape(-1, 4)[:, :3], axis=0)
    assert np.abs(median - (0.343, 0.783, 0.343)).max() < 0.05, median  # measured (0.337, 0.776, 0.337)
    centre = sum((result.matrix_world @ v.co for v in result.data.vertices), start=cube.location * 0)
    centre /= len(result.data.vertices)
    assert (centre - cube.location).length < 0.05  # measured 0.018 (the cube's edges are 1.2)
