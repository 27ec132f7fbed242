"""The view-list operators through ``bpy.ops``: add selected cameras with auto-pairing, remove, clear, ring."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.blender


def _camera(bpy, scene, name: str, location):
    camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    camera.location = location
    scene.collection.objects.link(camera)
    return camera


def _png(path, size=(8, 8)):
    from PIL import Image

    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(path)
    return path


def test_add_selected_cameras_pairs_by_name_and_reports_the_rest(addon, clean_scene, tmp_path):
    import bpy

    front, side, lost = (_camera(bpy, clean_scene, n, (i, -5.0, 1.0)) for i, n in enumerate(["Front", "Side", "Lost"]))
    _png(tmp_path / "front.png")
    _png(tmp_path / "Side.jpg")
    _png(tmp_path / "Side_mask.png")
    settings = clean_scene.gtr
    settings.image_folder = str(tmp_path)
    for obj in (front, side, lost):
        obj.select_set(True)
    assert bpy.ops.gtr.add_selected_cameras() == {"FINISHED"}
    rows = {row.camera.name: row for row in settings.views}
    assert sorted(rows) == ["Front", "Side"]  # "Lost" has no image: reported, not added
    assert rows["Front"].image == str(tmp_path / "front.png") and rows["Front"].mask == ""
    assert rows["Side"].image == str(tmp_path / "Side.jpg") and rows["Side"].mask == str(tmp_path / "Side_mask.png")
    assert bpy.ops.gtr.add_selected_cameras() == {"FINISHED"}  # again: rows are updated, not doubled
    assert len(settings.views) == 2

    settings.active_view = 0
    assert bpy.ops.gtr.remove_view() == {"FINISHED"}
    assert [row.camera.name for row in settings.views] == ["Side"]
    assert bpy.ops.gtr.clear_views() == {"FINISHED"}
    assert len(settings.views) == 0 and bpy.ops.gtr.remove_view.poll() is False


def test_ring_cameras_adds_rows_and_replaces_its_own_ring(addon, clean_scene):
    import bpy

    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    for obj in clean_scene.objects:
        obj.select_set(obj == cube)
    clean_scene.gtr.ring_count = 6
    assert bpy.ops.gtr.ring_cameras() == {"FINISHED"}
    first = [row.camera.name for row in clean_scene.gtr.views]
    assert len(first) == 6 and all(not row.image for row in clean_scene.gtr.views)
    for obj in clean_scene.objects:
        obj.select_set(obj == cube)
    assert bpy.ops.gtr.ring_cameras() == {"FINISHED"}  # the old ring's cameras are gone, their rows too
    assert len(clean_scene.gtr.views) == 6
    assert len([o for o in clean_scene.objects if o.type == "CAMERA"]) == 6
