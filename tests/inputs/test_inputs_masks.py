"""Pixels: image modes, masks from alpha / mask files / a colour key, depth maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.cameras import orbit_cameras, w2c_to_opengl_c2w
from backend.errors import InputError
from backend.inputs import load_job
from backend.inputs.images import color_key_mask, parse_colour, read_depth, read_image, read_mask

SIZE = 12


def disc(size=SIZE, radius=4.0) -> np.ndarray:
    jj, ii = np.mgrid[:size, :size] + 0.5
    return (ii - size / 2) ** 2 + (jj - size / 2) ** 2 < radius**2


def write_scene(root, *, alpha=True, masks=False, background=(255, 255, 255), views=3, options=None):
    """A job.json scene: red disc on ``background`` (RGB) or on transparency (RGBA), optional mask files."""
    cameras = orbit_cameras(views, radius=3.0, fov_degrees=40.0, size=SIZE)
    inside = disc()
    entries = []
    for n, cam in enumerate(cameras):
        rgb = np.empty((SIZE, SIZE, 3), np.uint8)
        rgb[:] = background
        rgb[inside] = (220, 30, 30)
        if alpha:
            image = Image.fromarray(np.dstack([rgb, np.where(inside, 255, 0).astype(np.uint8)]), "RGBA")
        else:
            image = Image.fromarray(rgb, "RGB")
        image.save(root / f"v{n}.png")
        entry = {"image": f"v{n}.png", "world_to_camera": cam.world_to_camera.tolist(), "K": cam.K.tolist()}
        if masks:
            Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), "L").save(root / f"m{n}.png")
            entry["mask"] = f"m{n}.png"
        entries.append(entry)
    (root / "job.json").write_text(json.dumps({"views": entries, "options": options or {}}))
    return root / "job.json"


def test_mask_from_alpha(tmp_path):
    job = load_job(write_scene(tmp_path, alpha=True))
    for view in job.views:
        np.testing.assert_array_equal(view.mask, disc().astype(np.float32))
        assert view.mask.dtype == np.float32
        np.testing.assert_allclose(
            view.rgb[disc()], np.tile([220 / 255, 30 / 255, 30 / 255], (disc().sum(), 1)), atol=1e-6
        )


def test_mask_from_files(tmp_path):
    path = write_scene(tmp_path, alpha=False, masks=True)
    for source in ("auto", "file"):
        job = load_job(path, options_override={"mask_source": source})
        for view in job.views:
            np.testing.assert_array_equal(view.mask > 0.5, disc())


def test_mask_from_nerfstudio_mask_path(tmp_path):
    cameras = orbit_cameras(2, radius=3.0, fov_degrees=40.0, size=SIZE)
    frames = []
    for n, cam in enumerate(cameras):
        Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / f"f{n}.jpg")
        Image.fromarray(np.where(disc(), 255, 0).astype(np.uint8)).save(tmp_path / f"m{n}.png")
        frames.append(
            {
                "file_path": f"f{n}",
                "mask_path": f"m{n}.png",
                "transform_matrix": w2c_to_opengl_c2w(cam.world_to_camera).tolist(),
            }
        )
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 16.0, "frames": frames}))
    job = load_job(tmp_path / "transforms.json")
    assert [v.name for v in job.views] == ["f0", "f1"]  # found as .jpg
    np.testing.assert_array_equal(job.views[1].mask > 0.5, disc())


@pytest.mark.parametrize("background", [[255, 255, 255], [1.0, 1.0, 1.0], "#ffffff"])
def test_mask_from_colour_key(tmp_path, background):
    path = write_scene(tmp_path, alpha=False, options={"mask_source": "color_key", "background": background})
    job = load_job(path)
    for view in job.views:
        np.testing.assert_array_equal(view.mask, disc().astype(np.float32))


def test_colour_key_auto_and_soft_ramp(tmp_path):
    # auto without alpha or mask files falls back to the key when "background" is set
    job = load_job(write_scene(tmp_path, alpha=False, background=(0, 0, 255), options={"background": [0, 0, 255]}))
    np.testing.assert_array_equal(job.views[0].mask, disc().astype(np.float32))
    rgb = np.zeros((1, 4, 3), np.float32)
    rgb[0, :, 0] = [0.05, 0.1, 0.15, 0.3]  # distances to black
    np.testing.assert_allclose(color_key_mask(rgb, [0, 0, 0], tolerance=0.1)[0], [0.0, 0.0, 0.5, 1.0], atol=1e-6)


def test_parse_colour_ranges():
    np.testing.assert_allclose(parse_colour([255, 128, 0]), [1.0, 128 / 255, 0.0])
    np.testing.assert_allclose(parse_colour([1, 1, 1]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(parse_colour([0.5, 0.25, 1.0]), [0.5, 0.25, 1.0])
    with pytest.raises(InputError, match="background colour"):
        parse_colour([1, 2])


def test_mask_source_errors(tmp_path):
    path = write_scene(tmp_path, alpha=False)
    with pytest.raises(InputError, match="no alpha channel") as info:
        load_job(path, options_override={"mask_source": "alpha"})
    assert (info.value.view, info.value.index) == ("v0", 0)
    with pytest.raises(InputError, match="no mask file"):
        load_job(path, options_override={"mask_source": "file"})
    with pytest.raises(InputError, match="no background colour"):
        load_job(path, options_override={"mask_source": "color_key"})
    with pytest.raises(InputError, match="unknown mask_source"):
        load_job(path, options_override={"mask_source": "magic"})
    job = load_job(path, options_override={"mask_source": "none", "bounds": {"centre": [0, 0, 0], "size": 1}})
    assert all(v.mask is None for v in job.views)


def test_opaque_alpha_is_not_a_mask(tmp_path):
    path = tmp_path / "opaque.png"
    Image.fromarray(np.full((4, 4, 4), 255, np.uint8), "RGBA").save(path)
    _, alpha = read_image(path)
    assert alpha is not None and alpha.min() == 1.0
    job = load_job(write_scene(tmp_path, alpha=False), options_override={"bounds": {"centre": [0, 0, 0], "size": 1}})
    assert job.views[0].mask is None  # auto: no alpha, no file, no key → none (bounds given)


def test_image_modes(tmp_path):
    grey16 = (np.arange(16).reshape(4, 4) * 4369).astype(np.uint16)  # 0 .. 65535
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb, alpha = read_image(tmp_path / "g16.png")
    assert rgb.shape == (4, 4, 3) and alpha is None
    np.testing.assert_allclose(rgb[..., 1], grey16 / 65535.0, atol=1e-6)

    la = np.dstack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 51, np.uint8)])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    rgb, alpha = read_image(tmp_path / "la.png")
    np.testing.assert_allclose(rgb, 100 / 255, atol=1e-6)
    np.testing.assert_allclose(alpha, 0.2, atol=1e-6)

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)
    rgb, alpha = read_image(tmp_path / "p.png")
    assert alpha[0, 0] == 0.0 and alpha[1, 1] == 1.0
    np.testing.assert_allclose(rgb[1, 1], [1.0, 0.0, 0.0])

    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(tmp_path / "c.jpg", quality=95)
    rgb, alpha = read_image(tmp_path / "c.jpg")
    assert alpha is None and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, 128 / 255, atol=3 / 255)


def test_read_mask_from_rgb_file(tmp_path):
    Image.fromarray(np.dstack([np.where(disc(), 255, 0).astype(np.uint8)] * 3)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png") > 0.5, disc())


def test_depth_npy_and_png(tmp_path):
    depth = np.linspace(0.0, 3.0, 16, dtype=np.float32).reshape(4, 4)
    depth[0, 1] = np.nan
    np.save(tmp_path / "d.npy", depth[..., None])
    loaded = read_depth(tmp_path / "d.npy")
    assert loaded.shape == (4, 4) and loaded[0, 1] == 0.0
    np.testing.assert_allclose(loaded[1:], depth[1:])
    Image.fromarray((np.arange(16).reshape(4, 4) * 1000).astype(np.uint16)).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_depth(tmp_path / "d.png"), np.arange(16).reshape(4, 4) * 1.0, atol=1e-5)
    np.testing.assert_allclose(read_depth(tmp_path / "d.png", depth_scale=0.002)[3, 3], 30.0, atol=1e-4)


def test_depth_in_job_json(tmp_path):
    path = write_scene(tmp_path, views=2)
    data = json.loads(path.read_text())
    for n, entry in enumerate(data["views"]):
        np.save(tmp_path / f"d{n}.npy", np.full((SIZE, SIZE), 2.5, np.float32))
        entry["depth"] = f"d{n}.npy"
    path.write_text(json.dumps(data))
    job = load_job(path)
    assert job.views[1].depth.shape == (SIZE, SIZE)
    np.testing.assert_allclose(job.views[1].depth, 2.5)
