"""render-dataset with the real ``bpy`` module: meshes written here (a PLY cube, an OBJ box, broken files) and
procedural objects, rendered tiny; files, cameras, depth and normals against the analytic boxes, resume."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.blender_addon.png_files import read_png

pytestmark = pytest.mark.blender

REPO_ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--views", "3", "--size", "32", "--samples", "16", "--seed", "7", "--distance", "3.5"]
"""Tiny renders; farther than the default 2.35, at which a cube seen face-on fills the whole frame."""


def _box_faces(low, high):
    """24 corners and 6 outward quads (1-based corner indices) of the box [low, high]."""
    corners, faces = [], []
    for axis in range(3):
        b, c = (axis + 1) % 3, (axis + 2) % 3
        for side in (0, 1):
            quad = []
            for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
                point = [0.0, 0.0, 0.0]
                point[axis] = (low, high)[side][axis]
                point[b] = (low, high)[u][b]
                point[c] = (low, high)[v][c]
                quad.append(point)
            if side == 0:
                quad.reverse()
            faces.append([len(corners) + k + 1 for k in range(4)])
            corners.extend(quad)
    return corners, faces


def _write_meshes(folder: Path) -> None:
    folder.mkdir(parents=True)
    # a cube of side 2 centred at (1, 2, 3), PLY (Z up, no axis change on import)
    corners, faces = _box_faces((0.0, 1.0, 2.0), (2.0, 3.0, 4.0))
    lines = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(corners)}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {len(faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    lines += [" ".join(map(str, p)) for p in corners] + ["4 " + " ".join(str(i - 1) for i in f) for f in faces]
    (folder / "cube.ply").write_text("\n".join(lines) + "\n")
    # a 4 × 2 × 1 box, OBJ (Y up: Blender's box is 4 wide, 1 deep, 2 high), in a folder of its own
    corners, faces = _box_faces((-3.0, -0.5, 1.5), (1.0, 1.5, 2.5))
    (folder / "box").mkdir()
    (folder / "box" / "box.obj").write_text(
        "".join(f"v {x} {y} {z}\n" for x, y, z in corners) + "".join(f"f {' '.join(map(str, f))}\n" for f in faces)
    )
    (folder / "broken.ply").write_text("this is not a PLY file\n")
    (folder / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")  # vertices only: no geometry


def _run(argv) -> tuple[int, list[str]]:
    from blender_addon.dataset.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue().splitlines()


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render-dataset") / "meshes"
    _write_meshes(folder)
    return folder


@pytest.fixture(scope="module")
def rendered(meshes):
    """The meshes rendered once: (dataset folder, exit code, log lines)."""
    output = meshes.parent / "dataset"
    code, lines = _run(["--meshes", meshes, "--output", output, *ARGS])
    return output, code, lines


def _camera_rays(frame: dict, fov: float, size: int, supersample: int = 1):
    """Origin (3,) and pixel-centre directions (size, size, 3) with camera z = −1 (t along them = camera-z depth);
    with ``supersample`` k, k × k rays per pixel at the centres of its sub-pixels (size·k, size·k, 3)."""
    m = np.array(frame["transform_matrix"])
    focal = size / 2 / math.tan(fov / 2)
    centres = ((np.arange(size * supersample) + 0.5) / supersample - size / 2) / focal
    x, y = np.meshgrid(centres, -centres)
    return m[:3, 3], np.stack([x, y, -np.ones_like(x)], -1) @ m[:3, :3].T


def _box_hits(origin, directions, low, high):
    """Analytic ray / box intersection: camera-z depth (0 = miss) and outward face normals (0 = miss)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (np.asarray(low) - origin) / directions
        t2 = (np.asarray(high) - origin) / directions
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = near.max(-1), far.min(-1)
    hit = (t_near <= t_far) & (t_near > 0)
    axis = near.argmax(-1)
    normals = np.zeros(directions.shape)
    rows, cols = np.nonzero(hit)
    normals[rows, cols, axis[rows, cols]] = -np.sign(directions[rows, cols, axis[rows, cols]])
    return np.where(hit, t_near, 0.0), normals


def _decode(folder: Path, frame: dict):
    rgba = read_png(folder / frame["file_path"])
    depth = read_png(folder / frame["depth_file_path"])[..., 0] * 0.0001
    encoded = read_png(folder / frame["normal_file_path"]).astype(np.float64)
    normals = np.where(encoded.any(-1, keepdims=True), encoded / 65535 * 2 - 1, 0.0)
    return rgba, depth, normals


def test_writes_the_dataset_files(rendered):
    output, code, lines = rendered
    assert code == 0, lines
    index = json.loads((output / "index.json").read_text())
    assert index["format"] == "gtr-dataset/1"
    assert index["objects"] == [
        {"name": "box", "path": "box", "views": 3, "source": "meshes/box/box.obj"},
        {"name": "cube", "path": "cube", "views": 3, "source": "meshes/cube.ply"},
    ]
    for name in ("box", "cube"):
        for kind, (depth, colour_type) in {"rgba": (8, 6), "depth": (16, 0), "normal": (16, 2)}.items():
            files = sorted((output / name / kind).iterdir())
            assert [f.name for f in files] == ["000.png", "001.png", "002.png"]
            for file in files:
                header = file.read_bytes()[16:26]
                assert header == bytes([0, 0, 0, 32, 0, 0, 0, 32, depth, colour_type])
    assert "[1/4] box: view 1/3" in lines and "[3/4] cube: view 3/3" in lines


def test_cameras_look_at_the_origin_from_the_configured_distance(rendered):
    output, _, _ = rendered
    data = json.loads((output / "cube" / "transforms.json").read_text())
    assert data["camera_angle_x"] == pytest.approx(math.radians(30))
    assert data["depth_unit_scale_factor"] == 0.0001 and data["up_axis"] == "z"
    assert len(data["frames"]) == 3
    for frame in data["frames"]:
        assert "camera_angle_x" not in frame  # one field of view for all views
        m = np.array(frame["transform_matrix"])
        assert m.shape == (4, 4) and np.allclose(m[3], [0, 0, 0, 1])
        assert np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-9)
        position = m[:3, 3]
        assert np.linalg.norm(position) == pytest.approx(3.5)
        assert np.allclose(m[:3, 2], position / np.linalg.norm(position))  # z backward: −z looks at the origin
        assert -10 <= math.degrees(math.asin(position[2] / 3.5)) <= 20


def test_objects_are_normalised_into_the_unit_box(rendered):
    output, _, _ = rendered
    cube = json.loads((output / "cube" / "transforms.json").read_text())["bounds"]
    assert np.allclose(cube["min"], [-0.5] * 3, atol=1e-6) and np.allclose(cube["max"], [0.5] * 3, atol=1e-6)
    box = json.loads((output / "box" / "transforms.json").read_text())["bounds"]  # OBJ Y up → Blender Z up
    assert np.allclose(box["max"], [0.5, 0.125, 0.25], atol=1e-6) and np.allclose(box["min"], [-0.5, -0.125, -0.25])


@pytest.mark.parametrize("name", ["cube", "box"])
def test_depth_normals_and_alpha_match_the_analytic_box(rendered, name):
    output, _, _ = rendered
    data = json.loads((output / name / "transforms.json").read_text())
    low, high = data["bounds"]["min"], data["bounds"]["max"]
    for frame in data["frames"]:
        rgba, depth, normals = _decode(output / name, frame)
        origin, directions = _camera_rays(frame, data["camera_angle_x"], 32)
        expected_depth, expected_normals = _box_hits(origin, directions, low, high)
        hit, covered = expected_depth > 0, depth > 0
        assert 100 < hit.sum() and (hit != covered).sum() <= 2  # rays grazing an edge may go either way
        both = hit & covered
        assert np.abs(depth - expected_depth)[both].max() < 1e-3  # camera z, not the ray's length:
        ray_length = expected_depth * np.linalg.norm(directions, axis=-1)
        assert np.abs(depth - ray_length)[both].max() > 5e-3  # …which differs off-centre by more than that
        assert np.allclose(np.linalg.norm(normals[covered], axis=-1), 1.0, atol=1e-4)
        assert np.all(normals[~covered] == 0)
        cosine = np.clip((normals * expected_normals).sum(-1), -1, 1)
        angles = np.degrees(np.arccos(cosine[both]))
        assert np.mean(angles < 1.0) >= 0.99 and np.median(angles) < 0.1
        alpha = rgba[..., 3] / 255
        # Cycles' pixel filter (Blackman-Harris, 1.5 px, drawn twice as wide) takes samples up to 1.5 px away
        inside = np.logical_and.reduce([np.roll(hit, (dy, dx), (0, 1)) for dy in range(-2, 3) for dx in range(-2, 3)])
        near = np.logical_or.reduce([np.roll(hit, (dy, dx), (0, 1)) for dy in range(-3, 4) for dx in range(-3, 4)])
        assert np.all(alpha[inside] == 1) and np.all(alpha[~near] == 0)
        assert rgba[..., :3][inside].mean() > 60  # lit, not black
        # alpha is the box's pixel coverage (4 × 4 rays per pixel here): same area, same centre to 0.15 px
        origin, fine = _camera_rays(frame, data["camera_angle_x"], 32, supersample=4)
        coverage = (_box_hits(origin, fine, low, high)[0] > 0).reshape(32, 4, 32, 4).mean(axis=(1, 3))
        assert alpha.sum() == pytest.approx(coverage.sum(), rel=0.02)
        rows, cols = np.mgrid[0:32, 0:32]
        for weights in (alpha, coverage):
            weights /= weights.sum()
        assert abs((alpha * cols).sum() - (coverage * cols).sum()) < 0.15  # half a pixel off would be a bug
        assert abs((alpha * rows).sum() - (coverage * rows).sum()) < 0.15


def test_broken_meshes_are_skipped_with_their_reason(rendered):
    output, code, lines = rendered
    assert code == 0
    broken = [line for line in lines if line.startswith("[2/4] broken: SKIPPED")]
    assert broken and "cannot import broken.ply" in broken[0] and "PLY" in broken[0]
    assert any(line.startswith("[4/4] points: SKIPPED: no geometry") for line in lines)
    assert "[3/4] cube: view 1/3" in lines  # the run went on after the broken file
    assert not (output / "broken").exists() and not (output / "points").exists()


def test_resume_renders_only_the_missing_view(rendered, meshes, tmp_path):
    output, _, _ = rendered
    copy = tmp_path / "dataset"
    shutil.copytree(output, copy)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*.png")}
    transforms = (copy / "cube" / "transforms.json").read_text()
    for kind in ("rgba", "depth", "normal"):
        (copy / "cube" / kind / "001.png").unlink()
    (copy / "cube" / "depth" / "002.png").unlink()  # one file of another view: that view is redone too

    code, lines = _run(["--meshes", meshes, "--output", copy, *ARGS])
    assert code == 0, lines
    assert [line for line in lines if ": view " in line] == ["[3/4] cube: view 2/3", "[3/4] cube: view 3/3"]
    assert "[1/4] box: complete, skipped" in lines
    assert any("cube: resuming, 1 of 3 views already written" in line for line in lines)
    for path, mtime in before.items():
        redone = path.parent.parent.name == "cube" and path.name in ("001.png", "002.png")
        assert path.is_file() and (redone or path.stat().st_mtime_ns == mtime), path
    assert (copy / "cube" / "transforms.json").read_text() == transforms
    assert np.array_equal(read_png(copy / "cube/depth/001.png"), read_png(output / "cube/depth/001.png"))
    assert not list(copy.rglob("*.tmp"))

    code, lines = _run(["--meshes", meshes, "--output", copy, *ARGS])  # everything is there now
    assert code == 0 and not [line for line in lines if ": view " in line]


def test_other_settings_or_a_bad_output_are_refused(rendered, meshes, tmp_path, capsys):
    output, _, _ = rendered
    code, _ = _run(["--meshes", meshes, "--output", output, *ARGS, "--size", "16"])
    assert code == 1 and "rendered with other settings" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    code, _ = _run(["--meshes", meshes, "--output", tmp_path / "file", *ARGS])
    assert code == 1 and "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(["--output", tmp_path / "new"])  # nothing to render
    assert "give --meshes DIR and/or --procedural N" in capsys.readouterr().err


def test_procedural_objects_are_deterministic_per_seed():
    """The same object for the same seed and index — up to float rounding and vertex order: the exact boolean
    solver runs on threads — and other objects for another seed."""
    import bpy

    from blender_addon.dataset import procedural, scene

    def made(seed, index):
        current = scene.empty_scene()
        obj = procedural.build(current, seed, index)
        positions = np.empty(len(obj.data.vertices) * 3)
        obj.data.vertices.foreach_get("co", positions)
        positions = positions.reshape(-1, 3)
        nodes = sorted(n.bl_idname for m in obj.data.materials for n in m.node_tree.nodes)
        assert [o.name for o in current.objects] == [obj.name]  # the boolean operands are gone
        assert len(obj.data.polygons) > 0 and len(bpy.data.meshes) == 1
        return positions[np.lexsort(positions.T[::-1])], nodes, len(obj.data.materials)

    kinds = set()
    for index in range(4):
        first, again = made(0, index), made(0, index)
        assert np.allclose(first[0], again[0], rtol=0, atol=1e-6) and first[1:] == again[1:]
        other = made(1, index)
        assert first[0].shape != other[0].shape or not np.allclose(first[0], other[0])
        kinds.update(first[1])
    assert "ShaderNodeBsdfPrincipled" in kinds and len(kinds) > 3  # some procedural textures among them


def test_rendered_procedural_objects_repeat_for_a_seed(tmp_path):
    args = ["--procedural", "1", "--views", "2", "--size", "24", "--samples", "2", "--fov", "25", "35"]
    runs = {}
    for label, seed in (("a", 0), ("b", 0), ("c", 1)):
        code, lines = _run([*args, "--seed", seed, "--output", tmp_path / label])
        assert code == 0, lines
        runs[label] = tmp_path / label / "procedural_0000"
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index["objects"] == [
        {"name": "procedural_0000", "path": "procedural_0000", "views": 2, "source": "procedural seed 0 index 0"}
    ]
    for kind in ("depth", "normal", "rgba"):  # equal up to the boolean solver's float rounding
        for view in ("000.png", "001.png"):
            a, b = (read_png(runs[run] / kind / view).astype(int) for run in "ab")
            assert np.mean(a != b) < 0.01 and np.abs(a - b).max() <= (2 if kind != "normal" else 8), (kind, view)
    assert (runs["a"] / "transforms.json").read_text() == (runs["b"] / "transforms.json").read_text()
    frames = json.loads((runs["a"] / "transforms.json").read_text())["frames"]
    assert all(math.radians(25) <= f["camera_angle_x"] <= math.radians(35) for f in frames)  # per view
    assert not np.array_equal(read_png(runs["a"] / "depth/000.png"), read_png(runs["c"] / "depth/000.png"))


def test_the_backend_checker_accepts_the_dataset(rendered):
    dataset = pytest.importorskip("backend.dataset")
    output, _, _ = rendered
    report = dataset.check_dataset(output)
    assert report.ok, report
    assert sorted(report.good) == ["box", "cube"] and not report.warnings


def test_runs_as_a_blender_script(tmp_path):
    """``launch.py`` is what ``blender -b --python`` runs; here the venv's Python (with bpy) plays Blender."""
    launcher = REPO_ROOT / "blender_addon" / "dataset" / "launch.py"
    output = tmp_path / "dataset"
    command = [
        sys.executable,
        str(launcher),
        "--",
        "--procedural",
        "1",
        "--views",
        "1",
        "--size",
        "16",
        "--samples",
        "1",
        "--output",
        str(output),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/1] procedural_0000: view 1/1" in result.stdout
    assert (output / "procedural_0000" / "normal" / "000.png").is_file()


def test_the_shared_textured_meshes_render(shared_data, tmp_path):
    """The shared folder's OBJ + MTL + texture and GLB meshes import with their textures and render."""
    meshes = shared_data / "meshes"
    if not meshes.is_dir():
        pytest.skip(f"no meshes in {shared_data}")
    code, lines = _run(["--meshes", meshes, "--output", tmp_path / "dataset", "--views", "1", "--size", "24",
                        "--samples", "2"])  # fmt: skip
    assert code == 0, lines
    assert not [line for line in lines if "SKIPPED" in line], lines
    index = json.loads((tmp_path / "dataset" / "index.json").read_text())
    assert {"spot", "duck_glb_threejs_reexport"} <= {o["name"] for o in index["objects"]}
    for entry in index["objects"]:
        rgba = read_png(tmp_path / "dataset" / entry["path"] / "rgba" / "000.png").astype(float)
        covered = rgba[..., 3] == 255
        assert covered.sum() > 20
        assert rgba[..., :3][covered].std(axis=0).max() > 5  # textured or shaded, not one flat colour


def test_a_missing_texture_is_a_reason_to_skip(tmp_path):
    from blender_addon.dataset import scene

    (tmp_path / "a.mtl").write_text("newmtl skin\nKd 1 1 1\nmap_Kd skin.png\n")
    (tmp_path / "a.obj").write_text("mtllib a.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                                    "usemtl skin\nf 1/1 2/2 3/3\n")  # fmt: skip
    scene.empty_scene()
    with pytest.raises(scene.MeshProblem, match=r"uses the texture .*skin\.png.*missing"):
        scene.import_mesh(tmp_path / "a.obj")
    with pytest.raises(scene.MeshProblem, match="unsupported file type '.fbx'"):
        scene.import_mesh(tmp_path / "a.fbx")
