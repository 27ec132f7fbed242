"""Camera conventions checked against outside data: Blender's own renders, through every importer.

``tests/data/spot_views`` holds four views of Keenan Crane's "Spot" rendered by Blender (RGBA, 128², see its
``make_fixture.py``), Blender's camera-to-world matrices and ``gt.ply``, the rendered mesh (decimated). Each test
writes the same views in one input format, loads them with :func:`backend.inputs.load_job`, rasterises the mesh
through every loaded camera and compares the silhouette with the render's alpha channel, read here with Pillow.
Blender produced that alpha, so a mistake that a writer and a reader of ours make symmetrically cannot pass.

The writers below convert poses with the conventions as the formats' own documentation states them (OpenGL
camera axes in ``transforms*.json``, OpenCV world-to-camera in ``job.json`` and ``cam_XXX.txt``), written out
by hand rather than with :mod:`backend.cameras`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.inputs import load_job
from backend.raster import rasterize

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "spot_views"

IOU_MIN = 0.98
"""Silhouette IoU every importer must reach on every view. Measured: 0.9930–0.9960, the same for all five formats
(the decimated mesh and pixel-centre sampling of a 128² grid account for the rest); a principal point half a
pixel off already gives 0.961–0.964."""


# ------------------------------------------------------------------------------------------------ the fixture


def blender_frames() -> tuple[float, list[tuple[str, np.ndarray]]]:
    """(camera_angle_x, [(name, Blender camera-to-world (4, 4))]) as stored in the fixture."""
    data = json.loads((FIXTURE / "transforms.json").read_text())
    frames = [(Path(f["file_path"]).name, np.asarray(f["transform_matrix"], np.float64)) for f in data["frames"]]
    return float(data["camera_angle_x"]), frames


def reference_alpha(name: str) -> np.ndarray:
    """(H, W) bool: Blender's alpha > 0.5, straight from the PNG."""
    rgba = np.asarray(Image.open(FIXTURE / f"{name}.png").convert("RGBA"))
    return rgba[..., 3] > 127


def image_size(name: str) -> tuple[int, int]:
    width, height = Image.open(FIXTURE / f"{name}.png").size
    return width, height


def opencv_world_to_camera(blender_c2w: np.ndarray) -> np.ndarray:
    """Blender camera-to-world (camera looks down its −z, y up) → OpenCV world-to-camera (looks down +z, y down).

    The OpenCV camera's axes in the world are Blender's x, −y, −z columns; the inverse of a rigid [R | t] is
    [Rᵀ | −Rᵀ t].
    """
    R = blender_c2w[:3, :3] * np.array([1.0, -1.0, -1.0])
    t = blender_c2w[:3, 3]
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ t
    return w2c


def focal_pixels(camera_angle_x: float, width: int) -> float:
    """Horizontal field of view → focal length in pixels (the image spans ``width`` pixels)."""
    return width / 2.0 / np.tan(camera_angle_x / 2.0)


def save_rgb(path: Path, name: str) -> None:
    """The render without its alpha (RGB only), so the importer needs the separate mask file."""
    Image.open(FIXTURE / f"{name}.png").convert("RGB").save(path)


def save_mask(path: Path, name: str) -> None:
    Image.open(FIXTURE / f"{name}.png").getchannel("A").save(path)


# ---------------------------------------------------------------------------------------------------- writers


def write_nerf_synthetic(folder: Path) -> Path:
    """The fixture as it is: ``camera_angle_x``, extension-less ``file_path``, RGBA images."""
    shutil.copytree(FIXTURE, folder, dirs_exist_ok=True)
    return folder


def write_instant_ngp(folder: Path) -> Path:
    """instant-ngp: top-level ``fl_x`` ``fl_y`` ``cx`` ``cy`` ``w`` ``h`` plus its own scene placement keys."""
    angle, frames = blender_frames()
    (folder / "images").mkdir(parents=True)
    entries = []
    for name, c2w in frames:
        shutil.copy(FIXTURE / f"{name}.png", folder / "images" / f"{name}.png")
        entries.append({"file_path": f"images/{name}.png", "transform_matrix": c2w.tolist()})
    w, h = image_size(frames[0][0])
    f = focal_pixels(angle, w)
    data = {
        "fl_x": f,
        "fl_y": f,
        "cx": w / 2,
        "cy": h / 2,
        "w": w,
        "h": h,
        "aabb_scale": 4,
        "scale": 0.33,
        "offset": [0.5, 0.5, 0.5],
        "frames": entries,
    }
    (folder / "transforms.json").write_text(json.dumps(data))
    return folder / "transforms.json"


def write_nerfstudio(folder: Path) -> Path:
    """nerfstudio: ``camera_model`` OPENCV with zero distortion, per-frame intrinsics, RGB images + ``mask_path``."""
    angle, frames = blender_frames()
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    entries = []
    for n, (name, c2w) in enumerate(frames):
        image, mask = f"images/frame_{n + 1:05d}.png", f"masks/frame_{n + 1:05d}.png"
        save_rgb(folder / image, name)
        save_mask(folder / mask, name)
        w, h = image_size(name)
        f = focal_pixels(angle, w)
        entries.append(
            {
                "file_path": image,
                "mask_path": mask,
                "transform_matrix": c2w.tolist(),
                "fl_x": f,
                "fl_y": f,
                "cx": w / 2,
                "cy": h / 2,
                "w": w,
                "h": h,
            }
        )
    data = {
        "camera_model": "OPENCV",
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "applied_transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]],
        "frames": entries,
    }
    (folder / "transforms.json").write_text(json.dumps(data))
    return folder / "transforms.json"


def write_job_json(folder: Path) -> Path:
    """job.json: OpenCV world-to-camera, K in pixels, RGB images with separate mask files."""
    angle, frames = blender_frames()
    folder.mkdir(parents=True)
    views = []
    for name, c2w in frames:
        save_rgb(folder / f"{name}.png", name)
        save_mask(folder / f"{name}_mask.png", name)
        w, h = image_size(name)
        f = focal_pixels(angle, w)
        views.append(
            {
                "image": f"{name}.png",
                "mask": f"{name}_mask.png",
                "name": name,
                "world_to_camera": opencv_world_to_camera(c2w).tolist(),
                "K": [[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]],
                "width": w,
                "height": h,
            }
        )
    (folder / "job.json").write_text(json.dumps({"version": 1, "views": views}))
    return folder / "job.json"


def write_gtr_folder(folder: Path) -> Path:
    """cam_XXX.txt + rgb_XXX.png. The intrinsics are written for Blender's 256² renders (the fixture's images are
    128²), so the reader's rescaling to the image's size is part of what is checked."""
    angle, frames = blender_frames()
    folder.mkdir(parents=True, exist_ok=True)
    for n, (name, c2w) in enumerate(frames):
        shutil.copy(FIXTURE / f"{name}.png", folder / f"rgb_{n:03d}.png")
        w2c = opencv_world_to_camera(c2w)
        w, h = 2 * image_size(name)[0], 2 * image_size(name)[1]
        f = focal_pixels(angle, w)
        rows = "\n".join(" ".join(f"{v:.10f}" for v in row) for row in w2c)
        (folder / f"cam_{n:03d}.txt").write_text(f"extrinsic\n{rows}\n\nintrinsic\n{f} {f} {w / 2} {h / 2} {h} {w}\n")
    return folder


WRITERS = {
    "nerf_synthetic": write_nerf_synthetic,
    "instant_ngp": write_instant_ngp,
    "nerfstudio": write_nerfstudio,
    "job_json": write_job_json,
    "gtr_cams": write_gtr_folder,
}


# ---------------------------------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def gt_mesh() -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.load(FIXTURE / "gt.ply", force="mesh", process=False)
    return torch.as_tensor(mesh.vertices, dtype=torch.float64), torch.as_tensor(mesh.faces, dtype=torch.int64)


def silhouette_ious(job, gt_mesh) -> list[float]:
    """Per loaded view (in the fixture's frame order): IoU of the rasterised mesh with Blender's alpha."""
    vertices, faces = gt_mesh
    ious = []
    for view, (name, _) in zip(job.views, blender_frames()[1]):
        reference = reference_alpha(name)
        assert (view.camera.width, view.camera.height) == reference.shape[::-1], view.name
        covered = rasterize(vertices, faces, view.camera, backend="torch").mask.cpu().numpy()
        ious.append(float((covered & reference).sum() / (covered | reference).sum()))
    return ious


@pytest.mark.parametrize("kind", list(WRITERS))
def test_importer_matches_blender_alpha(kind, tmp_path, gt_mesh):
    job = load_job(WRITERS[kind](tmp_path / kind))
    assert len(job.views) == 4
    for view, (name, _) in zip(job.views, blender_frames()[1]):
        # the views come back in the file's order, with the right image and its mask
        rgba = np.asarray(Image.open(FIXTURE / f"{name}.png").convert("RGBA"), np.float32) / 255.0
        np.testing.assert_allclose(view.rgb, rgba[..., :3], atol=1e-6)
        np.testing.assert_array_equal(view.mask > 0.5, reference_alpha(name))
    ious = silhouette_ious(job, gt_mesh)
    print(f"\n{kind}: silhouette IoU per view {[round(i, 4) for i in ious]}")
    assert min(ious) >= IOU_MIN, ious


def roll_camera_180(data: dict) -> None:
    """Image rows read as growing upwards and columns leftwards: the camera rolled 180° about its viewing axis
    (its x and y negated). Still a proper rotation, so the job loads and validates."""
    for frame in data["frames"]:
        c2w = np.asarray(frame["transform_matrix"])
        c2w[:3, :2] *= -1.0
        frame["transform_matrix"] = c2w.tolist()


def swap_world_up(data: dict) -> None:
    """The world taken as Y-up instead of Blender's Z-up (rotated −90° about x)."""
    rotation = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    for frame in data["frames"]:
        frame["transform_matrix"] = (rotation @ np.asarray(frame["transform_matrix"])).tolist()


def centre_half_pixel_off(data: dict) -> None:
    """The principal point in the pixel-centre convention ((W − 1) / 2) where the file means pixel corners (W / 2)."""
    width, height = image_size(blender_frames()[1][0][0])
    focal = focal_pixels(data.pop("camera_angle_x"), width)
    data.update(fl_x=focal, fl_y=focal, cx=(width - 1) / 2, cy=(height - 1) / 2)


MISTAKES = {
    # measured worst-view IoU (the best of the four views): 0.634, 0.583, 0.964 (all four views 0.961–0.964)
    "camera_rolled_180": (roll_camera_180, 0.7),
    "world_up_swapped": (swap_world_up, 0.7),
    "centre_half_pixel_off": (centre_half_pixel_off, IOU_MIN),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_wrong_convention_fails(mistake, tmp_path, gt_mesh):
    """The same check catches convention mistakes: with each, even the best view stays below its ceiling."""
    edit, ceiling = MISTAKES[mistake]
    folder = write_nerf_synthetic(tmp_path / "wrong")
    data = json.loads((folder / "transforms.json").read_text())
    edit(data)
    (folder / "transforms.json").write_text(json.dumps(data))
    ious = silhouette_ious(load_job(folder, validate=False), gt_mesh)
    print(f"\n{mistake}: silhouette IoU per view {[round(i, 4) for i in ious]}")
    assert max(ious) < ceiling, ious
