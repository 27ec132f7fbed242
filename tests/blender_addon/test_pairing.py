"""Auto-pairing of cameras with images (blender_addon.pairing) on real scenes and real files."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.blender


def write_images(folder: Path, *names: str) -> list[Path]:
    """Tiny real PNG files (whatever the extension) at ``folder / name``."""
    import bpy

    picture = bpy.data.images.new("tiny", 4, 4)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(filepath=str(path))
        paths.append(path)
    bpy.data.images.remove(picture)
    return paths


def add_camera(scene, name: str, animated: bool = False):
    import bpy

    camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    scene.collection.objects.link(camera)
    if animated:
        camera.keyframe_insert("location", frame=1)
        camera.location = (3.0, 0.0, 0.0)
        camera.keyframe_insert("location", frame=10)
    return camera


def test_background_image_first_enabled_relative_path_and_mask(clean_scene, tmp_path):
    import bpy

    from blender_addon.pairing import pair_views

    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))  # so '//' means tmp_path
    hidden, shown, mask = write_images(tmp_path, "renders/hidden.png", "renders/front.png", "renders/masks/front.png")
    camera = add_camera(clean_scene, "Front")
    for path, enabled in ((hidden, False), (shown, True)):
        background = camera.data.background_images.new()
        background.image = bpy.data.images.load(str(path))
        background.image.filepath = "//renders/" + path.name
        background.show_background_image = enabled
    pairing = pair_views([camera], clean_scene)
    assert pairing.unpaired == []
    (view,) = pairing.views
    assert (view.camera, view.image, view.mask, view.frame) == (camera, str(shown), str(mask), -1)
    assert view.source == "background image"


def test_name_match_ignores_case_prefers_png_and_finds_masks(clean_scene, tmp_path):
    from blender_addon.pairing import pair_views

    folder = tmp_path / "photos"
    jpg, png, mask, _ = write_images(
        folder, "Camera.001.jpg", "camera.001.PNG", "camera.001_mask.png", "Lonely_mask.png"
    )
    first, lonely = add_camera(clean_scene, "Camera.001"), add_camera(clean_scene, "Lonely")
    pairing = pair_views([first, lonely], clean_scene, folder=str(folder))
    (view,) = pairing.views
    assert (view.camera, view.image, view.mask, view.source) == (first, str(png), str(mask), "name match")
    (unpaired,) = pairing.unpaired
    assert unpaired.camera == lonely
    assert unpaired.message.startswith("Lonely: no image found (looked for an enabled background image; ")
    assert f"{folder / 'Lonely'}.{{png,jpg,jpeg,exr,tif,tiff,webp}}" in unpaired.message  # a mask is no image
    assert "only when a single animated camera is added" in unpaired.message


def test_image_sequence_for_one_animated_camera(clean_scene, tmp_path):
    from blender_addon.pairing import pair_views

    folder = tmp_path / "shot"
    frames = write_images(folder, *(f"render_{frame:04d}.png" for frame in range(1, 7)))
    (mask,) = write_images(folder, "masks/render_0003.png")
    clean_scene.frame_start, clean_scene.frame_end = 2, 4
    camera = add_camera(clean_scene, "Orbit", animated=True)
    pairing = pair_views([camera], clean_scene, folder=str(folder))
    assert pairing.unpaired == []
    assert [(v.frame, v.image, v.mask) for v in pairing.views] == [
        (2, str(frames[1]), ""),
        (3, str(frames[2]), str(mask)),
        (4, str(frames[3]), ""),
    ]
    assert {v.source for v in pairing.views} == {"image sequence"}

    still = add_camera(clean_scene, "Still")
    (unpaired,) = pair_views([still], clean_scene, folder=str(folder)).unpaired
    assert "an image sequence (the camera is not animated)" in unpaired.reason


def test_several_sequences_need_the_camera_name(clean_scene, tmp_path):
    from blender_addon.pairing import image_sequence, pair_views

    folder = tmp_path / "mixed"
    write_images(folder, "a_0001.png", "a_0002.png", "0001.exr", "orbit-0001.jpg", "orbit-0002.jpg")
    camera = add_camera(clean_scene, "Orbit", animated=True)
    clean_scene.frame_start, clean_scene.frame_end = 1, 250
    assert [frame for frame, _ in image_sequence(folder, 1, 250, "orbit")] == [1, 2]
    assert [Path(view.image).name for view in pair_views([camera], clean_scene, str(folder)).views] == [
        "orbit-0001.jpg",
        "orbit-0002.jpg",
    ]
    camera.name = "Dolly"
    (unpaired,) = pair_views([camera], clean_scene, str(folder)).unpaired
    assert "several image sequences" in unpaired.reason
    assert "####.exr, a_####.png, orbit-####.jpg" in unpaired.reason


def test_unpaired_reasons(clean_scene, tmp_path):
    import bpy

    from blender_addon.pairing import pair_views

    lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
    clean_scene.collection.objects.link(lamp)
    camera = add_camera(clean_scene, "Camera.003")
    background = camera.data.background_images.new()
    background.image = bpy.data.images.new("gone", 4, 4)
    background.image.source = "FILE"
    background.image.filepath = str(tmp_path / "gone.png")
    pairing = pair_views([lamp, camera], clean_scene)
    assert pairing.views == []
    assert [u.message for u in pairing.unpaired] == [
        "Lamp: not a camera (a light)",
        f"Camera.003: no image found (looked for background image {tmp_path / 'gone.png'} (file missing); "
        "an image folder (none given))",
    ]
    (unpaired,) = pair_views([camera], clean_scene, folder=str(tmp_path / "nowhere")).unpaired
    assert f"images in {tmp_path / 'nowhere'} (not a folder)" in unpaired.reason
