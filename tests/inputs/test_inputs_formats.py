"""Round trips: one small scene written as job.json, nerf_synthetic, instant-ngp, nerfstudio and cam_XXX.txt
loads back to the same cameras, and a known 3D point lands on the expected pixel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.cameras import Camera, intrinsics, look_at, orbit_cameras, project, w2c_to_opengl_c2w
from backend.errors import InputError
from backend.inputs import load_job, load_transforms
from backend.inputs.gtr_cams import parse_cam_txt

POINT = np.array([[0.1, -0.2, 0.15]])


def centred_cameras() -> list[Camera]:
    return orbit_cameras(4, radius=3.0, fov_degrees=40.0, size=16, elevations_degrees=(20.0, -10.0))


def offcentre_cameras() -> list[Camera]:
    """Non-square images, fx ≠ fy, principal point off-centre: catches width/height and cx/cy mix-ups."""
    K = intrinsics(20.0, 22.0, 11.5, 9.0)
    centres = [(3.0, 0.5, 1.0), (-1.0, 2.8, 0.5), (0.2, -3.0, 1.5)]
    return [Camera(look_at(c, (0.0, 0.0, 0.0)), K.copy(), 24, 16) for c in centres]


def write_images(folder, cameras, prefix="r_", suffix=".png"):
    """RGBA images: an opaque disc around the projected origin, transparent elsewhere. Returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n, cam in enumerate(cameras):
        u, v = project(cam, np.zeros((1, 3)))[0][0]
        jj, ii = np.mgrid[: cam.height, : cam.width] + 0.5
        inside = (ii - u) ** 2 + (jj - v) ** 2 < (0.3 * min(cam.width, cam.height)) ** 2
        rgba = np.zeros((cam.height, cam.width, 4), np.uint8)
        rgba[..., 0] = 200
        rgba[..., 1] = 40 * n
        rgba[..., 3] = np.where(inside, 255, 0)
        name = f"{prefix}{n}{suffix}"
        Image.fromarray(rgba, "RGBA").save(folder / name)
        names.append(name)
    return names


def write_job_json(root, cameras):
    names = write_images(root / "images", cameras)
    views = [
        {
            "image": f"images/{name}",
            "world_to_camera": cam.world_to_camera.tolist(),
            "K": cam.K.tolist(),
            "width": cam.width,
            "height": cam.height,
        }
        for name, cam in zip(names, cameras)
    ]
    (root / "job.json").write_text(json.dumps({"version": 1, "views": views, "options": {"preset": "draft"}}))
    return root / "job.json"


def write_nerf_synthetic(root, cameras):
    write_images(root / "train", cameras)
    cam = cameras[0]
    angle = 2 * np.arctan(0.5 * cam.width / cam.K[0, 0])
    frames = [
        {
            "file_path": f"./train/r_{n}",
            "rotation": 0.0,
            "transform_matrix": w2c_to_opengl_c2w(c.world_to_camera).tolist(),
        }
        for n, c in enumerate(cameras)
    ]
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": float(angle), "frames": frames}))
    return root / "transforms_train.json"


def write_instant_ngp(root, cameras):
    names = write_images(root / "images", cameras)
    K, cam = cameras[0].K, cameras[0]
    data = {
        "fl_x": K[0, 0],
        "fl_y": K[1, 1],
        "cx": K[0, 2],
        "cy": K[1, 2],
        "w": cam.width,
        "h": cam.height,
        "aabb_scale": 4,
        "scale": 0.33,
        "offset": [0.5, 0.5, 0.5],
        "frames": [
            {"file_path": f"images/{name}", "transform_matrix": w2c_to_opengl_c2w(c.world_to_camera).tolist()}
            for name, c in zip(names, cameras)
        ],
    }
    (root / "transforms.json").write_text(json.dumps(data))
    return root / "transforms.json"


def write_nerfstudio(root, cameras):
    names = write_images(root / "images", cameras, prefix="frame_")
    (root / "masks").mkdir()
    frames = []
    for n, (name, c) in enumerate(zip(names, cameras)):
        Image.fromarray(np.full((c.height, c.width), 255, np.uint8)).save(root / "masks" / f"mask_{n}.png")
        frames.append(
            {
                "file_path": f"images/{name}",
                "mask_path": f"masks/mask_{n}.png",
                "transform_matrix": w2c_to_opengl_c2w(c.world_to_camera).tolist(),
                "fl_x": c.K[0, 0],
                "fl_y": c.K[1, 1],
                "cx": c.K[0, 2],
                "cy": c.K[1, 2],
                "w": c.width,
                "h": c.height,
                "k1": 0.0,
                "k2": 0.0,
                "p1": 0.0,
                "p2": 0.0,
            }
        )
    data = {"camera_model": "OPENCV", "frames": frames}
    (root / "transforms.json").write_text(json.dumps(data))
    return root / "transforms.json"


def cam_txt(cam: Camera, width=None, height=None) -> str:
    K = cam.K
    rows = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in cam.world_to_camera[:3])
    return (
        f"extrinsic\n{rows}\n0 0 0 1\n\nintrinsic\n{K[0, 0]:.6f} {K[1, 1]:.6f} {K[0, 2]:.6f} {K[1, 2]:.6f} "
        f"{height or cam.height} {width or cam.width}\n"
    )


def write_gtr(root, cameras):
    write_images(root, cameras, prefix="rgb_00")
    for n, cam in enumerate(cameras):
        (root / f"cam_00{n}.txt").write_text(cam_txt(cam))
    return root


WRITERS = {
    "job_json": write_job_json,
    "nerf_synthetic": write_nerf_synthetic,
    "instant_ngp": write_instant_ngp,
    "nerfstudio": write_nerfstudio,
    "gtr": write_gtr,
}


def assert_same_cameras(job, cameras, atol=1e-5):
    assert len(job.views) == len(cameras)
    for view, cam in zip(job.views, cameras):
        np.testing.assert_allclose(view.camera.world_to_camera, cam.world_to_camera, atol=atol)
        np.testing.assert_allclose(view.camera.K, cam.K, atol=atol)
        assert (view.camera.width, view.camera.height) == (cam.width, cam.height)
        assert view.rgb.shape == (cam.height, cam.width, 3) and view.rgb.dtype == np.float32
        expected, _ = project(cam, POINT)
        got, z = project(view.camera, POINT)
        np.testing.assert_allclose(got, expected, atol=1e-3)
        assert z[0] > 0


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_round_trip_centred(tmp_path, kind):
    cameras = centred_cameras()
    path = WRITERS[kind](tmp_path, cameras)
    job = load_job(path if kind != "gtr" else tmp_path)
    assert_same_cameras(job, cameras)
    for view in job.views:  # the orbit looks at the origin: it lands on the image centre
        uv, _ = project(view.camera, np.zeros((1, 3)))
        np.testing.assert_allclose(uv[0], [8.0, 8.0], atol=1e-4)
        assert view.mask is not None and view.mask.shape == (16, 16)


@pytest.mark.parametrize("kind", ["job_json", "instant_ngp", "nerfstudio", "gtr"])
def test_round_trip_offcentre(tmp_path, kind):
    cameras = offcentre_cameras()
    WRITERS[kind](tmp_path, cameras)
    job = load_job(tmp_path)  # the folder form of every format
    assert_same_cameras(job, cameras)
    # A point on the camera axis lands on the principal point (11.5, 9) of these 24x16 images.
    cam = job.views[0].camera
    on_axis = cam.centre + 2.0 * cam.forward
    uv, _ = project(cam, on_axis[None])
    np.testing.assert_allclose(uv[0], [11.5, 9.0], atol=1e-4)


def test_job_json_options_and_override(tmp_path):
    path = write_job_json(tmp_path, centred_cameras())
    job = load_job(path, options_override={"texture": "uv", "bounds": {"centre": [0, 0, 0], "size": 1.0}})
    assert job.options == {"preset": "draft", "texture": "uv"}
    np.testing.assert_allclose(job.bounds.size, [1.0, 1.0, 1.0])
    assert job.source == str(path)
    assert [v.name for v in job.views] == ["r_0", "r_1", "r_2", "r_3"]


def test_job_json_orthographic_scale(tmp_path):
    cameras = centred_cameras()
    write_images(tmp_path, cameras)
    views = [
        {
            "image": f"r_{n}.png",
            "camera_type": "orthographic",
            "ortho_scale": 2.0,
            "world_to_camera": c.world_to_camera.tolist(),
        }
        for n, c in enumerate(cameras)
    ]
    (tmp_path / "job.json").write_text(json.dumps({"views": views}))
    job = load_job(tmp_path)
    cam = job.views[0].camera
    assert cam.orthographic
    np.testing.assert_allclose(cam.K, intrinsics(8.0, 8.0, 8.0, 8.0))  # 16 px span 2 units
    # a point one unit to the camera's right lands at the image's right edge
    uv, _ = project(cam, (cam.camera_to_world[:3, 3] + cam.camera_to_world[:3, 0])[None])
    np.testing.assert_allclose(uv[0], [16.0, 8.0], atol=1e-9)


def test_nerf_synthetic_camera_angle_y(tmp_path):
    cameras = offcentre_cameras()
    write_images(tmp_path / "train", cameras)
    fx, fy = 20.0, 22.0
    data = {
        "camera_angle_x": float(2 * np.arctan(12 / fx)),
        "camera_angle_y": float(2 * np.arctan(8 / fy)),
        "frames": [
            {"file_path": f"train/r_{n}", "transform_matrix": w2c_to_opengl_c2w(c.world_to_camera).tolist()}
            for n, c in enumerate(cameras)
        ],
    }
    (tmp_path / "transforms_train.json").write_text(json.dumps(data))
    job = load_job(tmp_path)
    np.testing.assert_allclose(job.views[0].camera.K, intrinsics(fx, fy, 12.0, 8.0), atol=1e-9)


def test_transforms_split_and_select(tmp_path):
    cameras = centred_cameras()
    write_nerf_synthetic(tmp_path, cameras[:2])
    write_images(tmp_path / "test", cameras, prefix="t_")
    angle = 2 * np.arctan(8 / cameras[0].K[0, 0])
    frames = [
        {"file_path": f"./test/t_{n}", "transform_matrix": w2c_to_opengl_c2w(c.world_to_camera).tolist()}
        for n, c in enumerate(cameras)
    ]
    (tmp_path / "transforms_test.json").write_text(json.dumps({"camera_angle_x": float(angle), "frames": frames}))
    test = load_transforms(tmp_path, split="test", select=range(3))
    assert [v.name for v in test.views] == ["t_0", "t_1", "t_2"]
    picked = load_transforms(tmp_path / "transforms_train.json", split="test", select=[3, 1])
    assert [v.name for v in picked.views] == ["t_3", "t_1"]
    assert_same_cameras(picked, [cameras[3], cameras[1]])
    with pytest.raises(InputError, match="out of range"):
        load_transforms(tmp_path, split="test", select=[4])
    with pytest.raises(InputError, match="transforms_val.json"):
        load_transforms(tmp_path, split="val")


def test_gtr_intrinsics_scale_with_image_size(tmp_path):
    cameras = offcentre_cameras()
    write_images(tmp_path, cameras, prefix="rgb_")
    for n, cam in enumerate(cameras):  # cameras written for images twice as large
        (tmp_path / f"cam_{n}.txt").write_text(cam_txt(cam.scaled(48, 32)))
    job = load_job(tmp_path)
    assert [v.name for v in job.views] == ["rgb_0", "rgb_1", "rgb_2"]
    assert_same_cameras(job, cameras)


def test_parse_cam_txt_layout():
    cam = offcentre_cameras()[1]
    w2c, K, size = parse_cam_txt(cam_txt(cam))
    np.testing.assert_allclose(w2c, cam.world_to_camera, atol=1e-6)
    np.testing.assert_allclose(K, cam.K, atol=1e-6)
    assert size == (24, 16)  # (width, height) from "... height width"
    with pytest.raises(InputError, match="extrinsic"):
        parse_cam_txt("intrinsic\n1 1 1 1 1 1\n")


def test_unknown_inputs_explain_the_fix(tmp_path):
    with pytest.raises(InputError, match="holds no job.json") as info:
        load_job(tmp_path)
    assert "transforms" in info.value.fix
    (tmp_path / "scene.obj").write_text("v 0 0 0\n")
    with pytest.raises(InputError, match="cannot tell"):
        load_job(tmp_path / "scene.obj")
    with pytest.raises(InputError, match="not found"):
        load_job(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(InputError, match="neither 'views'"):
        load_job(tmp_path / "other.json")
