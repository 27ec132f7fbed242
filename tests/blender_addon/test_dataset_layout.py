"""render-dataset's bpy-free parts: PNG files, random views, the dataset folder and mesh names."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from blender_addon.dataset import layout
from blender_addon.dataset.png import encode_png, write_png
from blender_addon.dataset.rig import RenderSettings, look_at_origin, sample_views
from tests.blender_addon.png_files import read_png


@pytest.mark.parametrize(
    "shape, dtype", [((7, 5), np.uint8), ((9, 4, 3), np.uint16), ((3, 8, 4), np.uint8), ((6, 6, 1), np.uint16)]
)
def test_png_round_trip_and_header(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, np.iinfo(dtype).max + 1, size=shape).astype(dtype)
    pixels[: shape[0] // 2] = pixels[0]  # smooth rows too, so several filter types get picked
    path = tmp_path / "x.png"
    write_png(path, pixels)
    data = path.read_bytes()
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = shape[2] if len(shape) == 3 else 1
    assert (width, height, depth, colour) == (
        shape[1],
        shape[0],
        8 * np.dtype(dtype).itemsize,
        {1: 0, 3: 2, 4: 6}[channels],
    )
    assert np.array_equal(read_png(path).reshape(shape), pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # the temporary file was renamed


def test_png_reads_what_other_writers_filter_differently(tmp_path):
    """All five filter types decode (a hand-built file with one row per filter type)."""
    rows = np.array([[10, 20, 30, 40], [11, 22, 33, 44], [200, 100, 50, 25], [1, 2, 3, 4], [9, 9, 9, 9]], np.uint8)
    filtered = []
    previous = np.zeros(4, np.int32)
    for kind, row in enumerate(rows.astype(np.int32)):
        left = np.concatenate([[0], row[:-1]])
        up_left = np.concatenate([[0], previous[:-1]])
        if kind == 0:
            out = row
        elif kind == 1:
            out = row - left
        elif kind == 2:
            out = row - previous
        elif kind == 3:
            out = row - (left + previous) // 2
        else:
            p = left + previous - up_left
            pa, pb, pc = abs(p - left), abs(p - previous), abs(p - up_left)
            out = row - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, up_left))
        filtered.append(bytes([kind]) + bytes((out & 0xFF).astype(np.uint8)))
        previous = row
    header = struct.pack(">IIBBBBB", 4, 5, 8, 0, 0, 0, 0)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = tmp_path / "filters.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(filtered)))
        + chunk(b"IEND", b"")
    )
    assert np.array_equal(read_png(path)[..., 0], rows)


def test_png_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((2, 2, 2), np.uint8))


def test_views_look_at_the_origin_from_the_configured_ranges():
    settings = RenderSettings(views=50, fov=(20.0, 40.0), distance=(2.0, 3.0), elevation=(-10.0, 20.0), seed=3)
    views = sample_views(settings, "spot")
    assert views == sample_views(settings, "spot")  # reproducible
    assert views != sample_views(settings, "bob")  # each object its own views
    for view in views:
        m = np.array(view.matrix)
        rotation, position = m[:3, :3], m[:3, 3]
        assert np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-12) and np.linalg.det(rotation) > 0
        assert np.allclose(-rotation[:, 2], -position / np.linalg.norm(position))  # looks at the origin
        assert abs(rotation[2, 0]) < 1e-12 and rotation[2, 1] > 0  # horizon level, world up is image up
        assert 2.0 <= np.linalg.norm(position) <= 3.0
        assert math.radians(20) <= view.fov <= math.radians(40)
        elevation = math.degrees(math.asin(position[2] / np.linalg.norm(position)))
        assert -10.0 - 1e-9 <= elevation <= 20.0 + 1e-9
    azimuths = np.array([v.azimuth for v in views])
    assert azimuths.min() < 60 and azimuths.max() > 300


def test_look_at_origin_axes():
    m = np.array(look_at_origin(azimuth=0.0, elevation=0.0, distance=2.0))
    assert np.allclose(m[:3, 3], [2, 0, 0])
    assert np.allclose(m[:3, 0], [0, 1, 0]) and np.allclose(m[:3, 1], [0, 0, 1]) and np.allclose(m[:3, 2], [1, 0, 0])


def test_settings_problems_are_explained():
    assert RenderSettings().problems() == []
    problems = " ".join(RenderSettings(views=0, distance=(0.5, 9.0), elevation=(-95.0, 0.0)).problems())
    assert "views must be at least 1" in problems
    assert "camera is outside the object" in problems
    assert "16-bit depth map" in problems
    assert "elevation must lie in [-89, 89]" in problems


def test_mesh_names(tmp_path):
    for relative in [
        "spot/spot_triangulated.obj",
        "spot/spot.mtl",
        "cube.ply",
        "chairs/a.obj",
        "chairs/b b.glb",
        "twin.obj",
        "twin.ply",
        "notes.txt",
    ]:
        (tmp_path / "meshes" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "meshes" / relative).write_text("")
    planned = layout.mesh_objects(tmp_path / "meshes")
    assert [(p.name, p.source) for p in planned] == [
        ("chairs_a", "meshes/chairs/a.obj"),
        ("chairs_b_b", "meshes/chairs/b b.glb"),
        ("cube", "meshes/cube.ply"),
        ("spot", "meshes/spot/spot_triangulated.obj"),
        ("twin_obj", "meshes/twin.obj"),
        ("twin_ply", "meshes/twin.ply"),
    ]
    assert [p.name for p in layout.procedural_objects(2, seed=5)] == ["procedural_0000", "procedural_0001"]
    assert layout.procedural_objects(2, seed=5)[1].source == "procedural seed 5 index 1"


def test_output_folder_checks(tmp_path):
    index = layout.open_output(tmp_path / "new" / "dataset")
    assert index == {"format": "gtr-dataset/1", "objects": []}
    assert json.loads((tmp_path / "new" / "dataset" / "index.json").read_text()) == index
    (tmp_path / "file").write_text("x")
    with pytest.raises(layout.OutputError, match="is a file"):
        layout.open_output(tmp_path / "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.jpg").write_text("x")
    with pytest.raises(layout.OutputError, match="not empty and holds no index.json"):
        layout.open_output(tmp_path / "other")
    (tmp_path / "other" / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(layout.OutputError, match="not a dataset index"):
        layout.open_output(tmp_path / "other")


def test_missing_views_and_settings_conflicts(tmp_path):
    settings = RenderSettings(views=3, size=8)
    folder = tmp_path / "obj"
    for k in range(3):
        for path in layout.view_files(folder, k, 3).values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"png")
    (folder / "normal" / "001.png").unlink()
    assert layout.missing_views(folder, 3) == [1]
    views = sample_views(settings, "obj")
    data = layout.transforms(settings, views, [0, 2], (np.zeros(3), np.ones(3)), "meshes/obj.ply")
    assert [f["file_path"] for f in data["frames"]] == ["rgba/000.png", "rgba/002.png"]
    assert data["depth_unit_scale_factor"] == 0.0001 and data["up_axis"] == "z"
    layout.write_json(folder / "transforms.json", data)
    assert layout.settings_conflict(folder, settings, "meshes/obj.ply") is None
    conflict = layout.settings_conflict(folder, RenderSettings(views=3, size=16), "meshes/obj.ply")
    assert conflict is not None and "size 8 → 16" in conflict


def test_the_committed_procedural_fixture():
    """tests/data/procedural_tiny (see its PROVENANCE.md) is a complete 8 × 8-view dataset at 64²."""
    root = Path(__file__).resolve().parents[1] / "data" / "procedural_tiny"
    index = json.loads((root / "index.json").read_text())
    assert index["format"] == "gtr-dataset/1"
    assert [o["name"] for o in index["objects"]] == [f"procedural_{k:04d}" for k in range(8)]
    for entry in index["objects"]:
        assert entry["views"] == 8 and entry["source"] == f"procedural seed 0 index {int(entry['name'][-4:])}"
        data = json.loads((root / entry["path"] / "transforms.json").read_text())
        assert len(data["frames"]) == 8 and layout.missing_views(root / entry["path"], 8) == []
        frame = data["frames"][0]
        assert read_png(root / entry["path"] / frame["file_path"]).shape == (64, 64, 4)
        depth = read_png(root / entry["path"] / frame["depth_file_path"])
        assert depth.shape == (64, 64, 1) and depth.dtype == np.uint16 and depth.max() > 0
        assert read_png(root / entry["path"] / frame["normal_file_path"]).shape == (64, 64, 3)
    dataset = pytest.importorskip("backend.dataset")
    report = dataset.check_dataset(root)
    assert report.ok and len(report.good) == 8, report
