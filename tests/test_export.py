"""Export: npz for the add-on, GLB/OBJ/PLY for other tools, all written atomically."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.colour import linear_to_srgb, srgb_to_linear
from backend.export import ExportConfig, export_mesh, save_png, write_atomic, write_json_atomic
from backend.mesh import Mesh

ALL = ("npz", "glb", "obj", "ply")


def cube_mesh() -> Mesh:
    """Unit cube centred at (1, 2, 3) (so the axis swap is visible), outward CCW faces, one colour per vertex."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], np.float32)
    corners += np.array([1.0, 2.0, 3.0], np.float32)
    hull = trimesh.convex.convex_hull(corners)  # consistent outward winding
    colors = np.zeros((8, 3), np.float32)
    colors[:, 0] = 0.5  # sRGB 0.5 → linear 0.21404
    colors[:, 1] = np.linspace(0.0, 1.0, 8)
    colors[:, 2] = 1.0
    order = np.array([np.flatnonzero((corners == v).all(axis=1))[0] for v in hull.vertices])
    return Mesh(
        vertices=torch.tensor(np.asarray(hull.vertices), dtype=torch.float32),
        faces=torch.tensor(np.asarray(hull.faces), dtype=torch.int64),
        vertex_colors=torch.tensor(colors[order]),
    )


def textured_quad() -> Mesh:
    """A square in the z = 0 plane facing +Z: four vertices, two faces, per-corner UVs, a 4×4 texture."""
    vertices = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int64)
    uv_of = {0: (0.0, 0.0), 1: (1.0, 0.0), 2: (1.0, 1.0), 3: (0.0, 1.0)}
    uvs = torch.tensor([[uv_of[int(i)] for i in f] for f in faces], dtype=torch.float32)
    texture = torch.zeros(4, 4, 3)
    texture[:2, :, 0] = 1.0  # top half red
    texture[2:, :, 2] = 1.0  # bottom half blue
    return Mesh(vertices, faces, uvs=uvs, texture=texture)


def read_glb(path):
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    doc = json.loads(data[20 : 20 + json_len])
    bin_offset = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<I4s", data, bin_offset)
    assert bin_type == b"BIN\0" and bin_len % 4 == 0 and bin_offset + 8 + bin_len == len(data)
    blob = data[bin_offset + 8 :]
    return doc, blob


def accessor_array(doc, blob, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    assert view["byteOffset"] % 4 == 0
    dtype = {5126: "<f4", 5125: "<u4", 5123: "<u2"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    arr = np.frombuffer(blob, dtype, acc["count"] * width, view["byteOffset"] + acc.get("byteOffset", 0))
    return arr.reshape(acc["count"], width)


def y_up(v):
    v = np.asarray(v)
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


# ---------------------------------------------------------------------------------------------------------- npz


def test_npz_coloured_cube(tmp_path):
    mesh = cube_mesh()
    paths = export_mesh(mesh, tmp_path, ExportConfig(formats=("npz",)))
    assert set(paths) == {"npz"} and paths["npz"] == tmp_path / "mesh.npz"
    with np.load(paths["npz"], allow_pickle=False) as z:
        assert set(z.files) == {"positions", "triangles", "vertex_colors", "edges", "corner_edges"}
        assert z["positions"].dtype == np.float32 and z["positions"].shape == (8, 3)
        # a closed cube of 12 triangles: 18 edges (V − E + F = 2), each corner's edge joins it to the next corner
        edges, corner_edges = z["edges"], z["corner_edges"]
        assert edges.dtype == corner_edges.dtype == np.int32 and edges.shape == (18, 2)
        assert len({tuple(e) for e in edges.tolist()}) == 18 and (edges[:, 0] < edges[:, 1]).all()
        tri = z["triangles"]
        pairs = np.sort(np.stack([tri.reshape(-1), np.roll(tri, -1, axis=1).reshape(-1)], 1), axis=1)
        np.testing.assert_array_equal(edges[corner_edges], pairs)
        assert z["triangles"].dtype == np.int32 and z["triangles"].shape == (12, 3)
        assert z["vertex_colors"].dtype == np.uint8 and z["vertex_colors"].shape == (8, 4)
        np.testing.assert_array_equal(z["positions"], mesh.vertices.numpy())
        np.testing.assert_array_equal(z["triangles"], mesh.faces.numpy())
        expected = np.round(mesh.vertex_colors.numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(z["vertex_colors"][:, :3], expected)
        assert (z["vertex_colors"][:, 3] == 255).all()


def test_npz_textured_quad(tmp_path):
    mesh = textured_quad()
    paths = export_mesh(mesh, tmp_path, ExportConfig(formats=("npz",)))
    assert set(paths) == {"npz", "texture"}
    with np.load(paths["npz"], allow_pickle=False) as z:
        assert z["uvs"].dtype == np.float32 and z["uvs"].shape == (2, 3, 2)
        np.testing.assert_array_equal(z["uvs"], mesh.uvs.numpy())
        name = str(z["texture"])
    assert (tmp_path / name) == paths["texture"] and paths["texture"].is_file()
    image = np.asarray(Image.open(paths["texture"]))
    assert image.shape == (4, 4, 3)
    assert tuple(image[0, 0]) == (255, 0, 0) and tuple(image[3, 0]) == (0, 0, 255)  # row 0 = top stays on top


def test_npz_is_a_plain_zip_of_npy(tmp_path):
    paths = export_mesh(textured_quad(), tmp_path, ExportConfig(formats=("npz",), stem="preview"))
    assert paths["npz"].name == "preview.npz" and paths["texture"].name == "preview_texture.png"
    with zipfile.ZipFile(paths["npz"]) as zf:
        names = ["corner_edges.npy", "edges.npy", "positions.npy", "texture.npy", "triangles.npy", "uvs.npy"]
        assert sorted(zf.namelist()) == names
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}  # uncompressed: fast to read


# ---------------------------------------------------------------------------------------------------------- glb


def test_srgb_to_linear_known_values():
    np.testing.assert_allclose(
        srgb_to_linear(np.array([0.0, 0.5, 1.0, 0.04045])), [0.0, 0.21404114, 1.0, 0.04045 / 12.92], rtol=1e-6
    )


def test_srgb_functions_agree_for_numpy_and_torch():
    values = np.linspace(-0.1, 1.1, 97)
    as_tensor = torch.tensor(values, dtype=torch.float64)
    np.testing.assert_allclose(srgb_to_linear(as_tensor).numpy(), srgb_to_linear(values), atol=1e-12)
    np.testing.assert_allclose(linear_to_srgb(as_tensor).numpy(), linear_to_srgb(values), atol=1e-12)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(values)), np.clip(values, 0, 1), atol=1e-9)


def test_glb_coloured_cube(tmp_path):
    mesh = cube_mesh()
    path = export_mesh(mesh, tmp_path, ExportConfig(formats=("glb",)))["glb"]
    doc, blob = read_glb(path)
    prim = doc["meshes"][0]["primitives"][0]
    attrs = prim["attributes"]
    assert set(attrs) == {"POSITION", "NORMAL", "COLOR_0"}

    positions = accessor_array(doc, blob, attrs["POSITION"])
    np.testing.assert_allclose(positions, y_up(mesh.vertices.numpy()), atol=1e-6)
    acc = doc["accessors"][attrs["POSITION"]]
    np.testing.assert_allclose(acc["min"], positions.min(axis=0))
    np.testing.assert_allclose(acc["max"], positions.max(axis=0))

    colour = accessor_array(doc, blob, attrs["COLOR_0"])
    assert doc["accessors"][attrs["COLOR_0"]]["componentType"] == 5126 and colour.shape == (8, 4)
    np.testing.assert_allclose(colour[:, 0], 0.21404, atol=1e-4)  # sRGB 0.5 written as linear
    np.testing.assert_allclose(colour[:, 2:], 1.0)

    normals = accessor_array(doc, blob, attrs["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    centre = y_up(np.array([[1.0, 2.0, 3.0]]))
    assert ((normals * (positions - centre)).sum(axis=1) > 0).all()  # outward after the axis swap

    indices = accessor_array(doc, blob, prim["indices"])
    assert doc["accessors"][prim["indices"]]["componentType"] == 5125
    np.testing.assert_array_equal(indices.reshape(-1, 3), mesh.faces.numpy())

    material = doc["materials"][prim["material"]]
    assert material["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    assert material["pbrMetallicRoughness"]["roughnessFactor"] == 1.0
    assert material["doubleSided"] is False

    scene = trimesh.load(path, process=False)  # trimesh keeps glTF's Y-up frame
    (loaded,) = scene.geometry.values()
    assert len(loaded.vertices) == 8 and len(loaded.faces) == 12
    np.testing.assert_allclose(loaded.vertices, y_up(mesh.vertices.numpy()), atol=1e-6)
    loaded_colour = np.asarray(loaded.visual.vertex_attributes["color"])
    np.testing.assert_allclose(loaded_colour[:, 0], 0.21404, atol=1e-4)
    np.testing.assert_allclose(loaded_colour[:, 1], srgb_to_linear(mesh.vertex_colors[:, 1].numpy()), atol=1e-6)


def test_glb_textured_quad(tmp_path):
    mesh = textured_quad()
    path = export_mesh(mesh, tmp_path, ExportConfig(formats=("glb",)))["glb"]
    doc, blob = read_glb(path)
    attrs = doc["meshes"][0]["primitives"][0]["attributes"]
    assert set(attrs) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    positions = accessor_array(doc, blob, attrs["POSITION"])
    uv = accessor_array(doc, blob, attrs["TEXCOORD_0"])
    assert positions.shape == (4, 3)  # (vertex, uv) pairs are shared between the two triangles
    for p, t in zip(positions, uv):
        # the original quad: vertex (x, y, 0) has uv (x, y); glTF flips v and swaps y/z
        x, y = p[0], -p[2]
        np.testing.assert_allclose(t, [x, 1.0 - y], atol=1e-6)
    normals = accessor_array(doc, blob, attrs["NORMAL"])
    np.testing.assert_allclose(normals, np.tile([0.0, 1.0, 0.0], (4, 1)), atol=1e-6)  # +Z up becomes +Y up

    pbr = doc["materials"][0]["pbrMetallicRoughness"]
    assert pbr["baseColorTexture"]["index"] == 0
    image = doc["images"][0]
    assert image["mimeType"] == "image/png"
    view = doc["bufferViews"][image["bufferView"]]
    png = blob[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == 4 and len(loaded.faces) == 2
    np.testing.assert_allclose(loaded.vertices, positions, atol=1e-6)
    assert loaded.visual.material.baseColorTexture.size == (4, 4)


def test_glb_splits_vertices_on_uv_seams(tmp_path):
    mesh = textured_quad()
    uvs = mesh.uvs.clone()
    uvs[1] += 0.25  # second triangle uses a different island: its three corners no longer share uvs
    mesh.uvs = uvs
    doc, blob = read_glb(export_mesh(mesh, tmp_path, ExportConfig(formats=("glb",)))["glb"])
    prim = doc["meshes"][0]["primitives"][0]
    positions = accessor_array(doc, blob, prim["attributes"]["POSITION"])
    uv = accessor_array(doc, blob, prim["attributes"]["TEXCOORD_0"])
    tri = accessor_array(doc, blob, prim["indices"]).reshape(-1, 3)
    assert positions.shape == (6, 3)
    original = y_up(mesh.vertices.numpy())
    for f in range(2):
        np.testing.assert_allclose(positions[tri[f]], original[mesh.faces[f].numpy()], atol=1e-6)
        expected = mesh.uvs[f].numpy().copy()
        expected[:, 1] = 1.0 - expected[:, 1]
        np.testing.assert_allclose(uv[tri[f]], expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- obj/ply


def test_obj_and_ply_round_trip_cube(tmp_path):
    mesh = cube_mesh()
    paths = export_mesh(mesh, tmp_path, ExportConfig(formats=("obj", "ply")))
    assert set(paths) == {"obj", "ply"}  # no texture, so no material file
    v = mesh.vertices.numpy()

    obj = trimesh.load(paths["obj"], force="mesh", process=False)
    np.testing.assert_allclose(obj.vertices, v, atol=1e-6)
    np.testing.assert_array_equal(obj.faces, mesh.faces.numpy())
    expected = np.round(mesh.vertex_colors.numpy() * 255)
    np.testing.assert_allclose(np.asarray(obj.visual.vertex_colors)[:, :3], expected, atol=1)

    ply = trimesh.load(paths["ply"], process=False)
    np.testing.assert_allclose(ply.vertices, v, atol=1e-7)
    np.testing.assert_array_equal(ply.faces, mesh.faces.numpy())
    np.testing.assert_array_equal(np.asarray(ply.visual.vertex_colors)[:, :3], expected.astype(np.uint8))
    header = paths["ply"].read_bytes().split(b"end_header\n")[0].decode()
    assert "binary_little_endian" in header and "property uchar alpha" in header


def test_obj_and_ply_textured_quad(tmp_path):
    mesh = textured_quad()
    paths = export_mesh(mesh, tmp_path, ExportConfig(formats=("obj", "ply")))
    assert "map_Kd mesh_texture.png" in paths["mtl"].read_text()
    text = paths["obj"].read_text()
    assert "mtllib mesh.mtl" in text and "vt 1 1" in text
    obj = trimesh.load(paths["obj"], force="mesh", process=False)
    assert len(obj.faces) == 2
    assert obj.visual.material.image.size == (4, 4)
    # trimesh splits vertices by uv: every vertex's uv must equal its (x, y) (v up, as in the mesh)
    np.testing.assert_allclose(obj.visual.uv, obj.vertices[:, :2], atol=1e-6)

    ply = trimesh.load(paths["ply"], process=False)
    assert len(ply.faces) == 2
    np.testing.assert_allclose(ply.vertices, mesh.vertices.numpy())
    assert b"comment TextureFile mesh_texture.png" in paths["ply"].read_bytes()[:400]


# ---------------------------------------------------------------------------------------------------------- atomic


def test_write_atomic_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"

    def failing(path):
        path.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, failing)
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1, 2]}

    def failing(path):
        path.write_text("{broken")
        raise OSError("boom")

    with pytest.raises(OSError):
        write_atomic(target, failing)
    assert json.loads(target.read_text())["a"] == 1.5
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_export_failure_midway_leaves_no_files(tmp_path, monkeypatch):
    from backend import export

    def broken(a):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(export, "_encode_ply", broken)
    with pytest.raises(RuntimeError, match="encoder failed"):
        export_mesh(cube_mesh(), tmp_path, ExportConfig(formats=ALL))
    assert list(tmp_path.iterdir()) == []


def test_export_failure_during_rename_removes_temps(tmp_path, monkeypatch):
    from backend import export

    real_replace = export.os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="rename failed"):
        export_mesh(textured_quad(), tmp_path, ExportConfig(formats=ALL))
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file, and no partial group either


def test_save_png_rgba(tmp_path):
    image = np.zeros((3, 5, 4), np.float32)
    image[..., 1] = 1.0
    image[..., 3] = 0.5
    save_png(tmp_path / "preview.png", image)
    loaded = np.asarray(Image.open(tmp_path / "preview.png"))
    assert loaded.shape == (3, 5, 4) and tuple(loaded[0, 0]) == (0, 255, 0, 128)
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        ExportConfig(formats=("fbx",))
    empty = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        export_mesh(empty, tmp_path, ExportConfig())
    assert list(tmp_path.iterdir()) == []
