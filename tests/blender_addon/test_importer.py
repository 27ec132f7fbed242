"""The mesh importer (blender_addon/importer.py) against the real bpy module and real .npz files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender

bpy = pytest.importorskip("bpy")
importer = pytest.importorskip("blender_addon.importer")


# ------------------------------------------------------------------------------------------------------------
# Small meshes in the export layout


def box_arrays() -> dict[str, np.ndarray]:
    """A closed unit box offset from the origin: 8 vertices, 12 outward-wound triangles."""
    positions = np.array(
        [[x, y, z] for z in (0.0, 1.0) for y in (0.0, 1.0) for x in (0.0, 1.0)], dtype=np.float32
    ) + np.float32([2.0, -1.0, 0.5])
    triangles = np.array(
        [
            [0, 2, 1], [1, 2, 3],  # bottom (z = 0)
            [4, 5, 6], [5, 7, 6],  # top
            [0, 1, 4], [1, 5, 4],  # y = 0
            [2, 6, 3], [3, 6, 7],  # y = 1
            [0, 4, 2], [2, 4, 6],  # x = 0
            [1, 3, 5], [3, 7, 5],  # x = 1
        ],
        dtype=np.int32,
    )  # fmt: skip
    return {"positions": positions, "triangles": triangles}


def grid_arrays(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """An (n×n)-vertex displaced grid with shuffled vertex order, sRGB vertex colours and per-corner UVs."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, n), indexing="xy")
    grid_positions = np.stack([u, v, 0.2 * np.sin(5.0 * u) * v], axis=-1).reshape(-1, 3)
    index = np.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, 1:].ravel(), index[1:, :-1].ravel()
    grid_triangles = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    order = rng.permutation(n * n)  # file vertex k = grid vertex order[k]
    rank = np.argsort(order)
    positions = grid_positions[order].astype(np.float32)
    triangles = rank[grid_triangles].astype(np.int32)
    uvs = np.stack([u.ravel(), v.ravel()], axis=1)[grid_triangles].astype(np.float32)  # (M, 3, 2), v up
    colors = rng.integers(0, 256, size=(n * n, 4), dtype=np.uint8)
    colors[:, 3] = 255
    colors[:4, :3] = [[0, 0, 0], [255, 255, 255], [10, 11, 12], [128, 64, 200]]  # both sRGB branches + ends
    return {"positions": positions, "triangles": triangles, "vertex_colors": colors, "uvs": uvs}


def write_npz(path: Path, **arrays) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Save (H, W, 3) uint8 as an 8-bit RGB PNG (row 0 = top), with Blender's own image writer."""
    h, w, _ = rgb.shape
    image = bpy.data.images.new("png writer", w, h, alpha=False)
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)[::-1]  # Blender rows: bottom first
    image.pixels.foreach_set((rgba.astype(np.float32) / 255.0).reshape(-1))
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)
    return path


def two_band_texture(size: int = 16) -> np.ndarray:
    """(size, size, 3) uint8: top half red, bottom half blue (row 0 = top)."""
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[: size // 2] = (255, 0, 0)
    rgb[size // 2 :] = (0, 0, 255)
    return rgb


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The backend's decoding, an implementation independent of the importer's table."""
    from backend.colour import srgb_to_linear as backend_srgb_to_linear

    return backend_srgb_to_linear(c)


# ------------------------------------------------------------------------------------------------------------
# Reading what Blender built


def mesh_positions(mesh) -> np.ndarray:
    out = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.attributes["position"].data.foreach_get("vector", out)
    return out.reshape(-1, 3)


def mesh_triangles(mesh) -> np.ndarray:
    corners = np.empty(len(mesh.loops), np.int32)
    mesh.attributes[".corner_vert"].data.foreach_get("value", corners)
    starts = np.empty(len(mesh.polygons), np.int32)
    totals = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("loop_start", starts)
    mesh.polygons.foreach_get("loop_total", totals)
    assert (totals == 3).all()
    return corners[starts[:, None] + np.arange(3)]


def corner_uvs(mesh, name: str) -> np.ndarray:
    out = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.attributes[name].data.foreach_get("vector", out)
    return out.reshape(-1, 3, 2)


def links_into(material, socket_name: str) -> list:
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return [link for link in material.node_tree.links if link.to_node == bsdf and link.to_socket.name == socket_name]


def data_names() -> dict[str, list[str]]:
    return {
        kind: sorted(block.name for block in getattr(bpy.data, kind))
        for kind in ("objects", "meshes", "materials", "images")
    }


# ------------------------------------------------------------------------------------------------------------
# Geometry, colours, UVs


def test_positions_and_triangles_round_trip_exactly(tmp_path, clean_scene):
    arrays = grid_arrays()
    read = importer.read_mesh_npz(write_npz(tmp_path / "mesh.npz", **arrays))
    obj = importer.update_object(None, "Result", clean_scene.collection, read)
    mesh = obj.data
    assert np.array_equal(mesh_positions(mesh), arrays["positions"])
    assert np.array_equal(mesh_triangles(mesh), arrays["triangles"])
    n, m = len(arrays["positions"]), len(arrays["triangles"])
    assert len(mesh.edges) == n + m - 1  # a disc: V − E + F = 1
    assert mesh.validate(verbose=False) is False  # False: nothing needed fixing
    assert obj.users_collection[0] == clean_scene.collection
    assert np.array_equal(np.array(obj.matrix_world), np.eye(4))
    assert not obj.hide_select


def test_edges_from_the_file_equal_blenders(tmp_path, clean_scene):
    grid = grid_arrays()
    path = write_npz(tmp_path / "mesh.npz", **grid)
    from_file = write_npz(tmp_path / "with_edges.npz", **grid, **_edges(grid, lambda e, c: (e, c)))
    assert importer.read_mesh_npz(path).edges is None
    assert importer.read_mesh_npz(from_file).edges is not None
    theirs = importer.build_mesh("the file's", importer.read_mesh_npz(from_file))
    blenders = importer.build_mesh("blender's", importer.read_mesh_npz(path))

    def edges(mesh):
        e = np.empty(len(mesh.edges) * 2, np.int32)
        mesh.attributes[".edge_verts"].data.foreach_get("value", e)
        return {tuple(sorted(pair)) for pair in e.reshape(-1, 2).tolist()}

    def corner_edges(mesh):
        c = np.empty(len(mesh.loops), np.int32)
        mesh.attributes[".corner_edge"].data.foreach_get("value", c)
        pairs = np.empty(len(mesh.edges) * 2, np.int32)
        mesh.attributes[".edge_verts"].data.foreach_get("value", pairs)
        return [tuple(sorted(pair)) for pair in pairs.reshape(-1, 2)[c].tolist()]

    assert edges(theirs) == edges(blenders)
    assert corner_edges(theirs) == corner_edges(blenders)  # the same pair of vertices for each corner
    assert theirs.validate(verbose=False) is False  # nothing needed fixing


def test_vertex_colors_are_a_linear_float_point_attribute(tmp_path, clean_scene):
    arrays = grid_arrays()
    read = importer.read_mesh_npz(write_npz(tmp_path / "mesh.npz", **arrays))
    mesh = importer.build_mesh("Result", read)
    attribute = mesh.color_attributes[importer.COLOR_ATTRIBUTE]
    assert (attribute.data_type, attribute.domain) == ("FLOAT_COLOR", "POINT")
    assert mesh.color_attributes.active_color_name == importer.COLOR_ATTRIBUTE
    assert mesh.color_attributes.render_color_index == mesh.color_attributes.find(importer.COLOR_ATTRIBUTE)
    values = np.empty(len(mesh.vertices) * 4, np.float32)
    attribute.data.foreach_get("color", values)
    values = values.reshape(-1, 4)
    expected_rgb = srgb_to_linear(arrays["vertex_colors"][:, :3] / 255.0)
    assert np.abs(values[:, :3] - expected_rgb).max() < 1e-7  # measured 2.9e-8 (float32 rounding)
    assert np.array_equal(values[:, 3], np.ones(len(values), np.float32))
    assert values[1, :3].tolist() == [1.0, 1.0, 1.0] and values[0, :3].tolist() == [0.0, 0.0, 0.0]


def test_uvs_are_the_files_per_corner_uvs(tmp_path, clean_scene):
    arrays = grid_arrays()
    read = importer.read_mesh_npz(write_npz(tmp_path / "mesh.npz", **arrays))
    mesh = importer.build_mesh("Result", read)
    assert mesh.uv_layers.active.name == importer.UV_MAP
    assert np.array_equal(corner_uvs(mesh, importer.UV_MAP), arrays["uvs"])


def test_shading_is_smooth_by_angle_or_flat(tmp_path, clean_scene):
    read = importer.read_mesh_npz(write_npz(tmp_path / "box.npz", **box_arrays()))
    smooth = importer.build_mesh("smooth", read)
    assert all(p.use_smooth for p in smooth.polygons)
    sharp = {tuple(sorted(e.vertices)) for e in smooth.edges if e.use_edge_sharp}
    assert len(sharp) == 12 and len(smooth.edges) == 18  # the box's 12 creases; its 6 face diagonals stay smooth
    flat = importer.build_mesh("flat", read, smooth_angle=None)
    assert not any(p.use_smooth for p in flat.polygons)


def test_zero_area_triangles_are_dropped_with_their_uvs(tmp_path, clean_scene):
    arrays = grid_arrays(n=4)
    triangles = np.concatenate([arrays["triangles"], [[0, 0, 1], [2, 3, 3]]]).astype(np.int32)
    uvs = np.concatenate([arrays["uvs"], np.full((2, 3, 2), 0.5, np.float32)])
    read = importer.read_mesh_npz(write_npz(tmp_path / "mesh.npz", **dict(arrays, triangles=triangles, uvs=uvs)))
    assert read.dropped_triangles == 2
    mesh = importer.build_mesh("Result", read)
    assert np.array_equal(mesh_triangles(mesh), arrays["triangles"])
    assert np.array_equal(corner_uvs(mesh, importer.UV_MAP), arrays["uvs"])


# ------------------------------------------------------------------------------------------------------------
# Materials


def test_vertex_color_material_links_the_color_attribute_to_base_color(tmp_path, clean_scene):
    arrays = grid_arrays()
    del arrays["uvs"]
    obj = importer.update_object(
        None, "Result", clean_scene.collection, importer.read_mesh_npz(write_npz(tmp_path / "m.npz", **arrays))
    )
    material = obj.active_material
    (link,) = links_into(material, "Base Color")
    assert link.from_node.bl_idname == "ShaderNodeVertexColor" and link.from_socket.name == "Color"
    assert link.from_node.layer_name == importer.COLOR_ATTRIBUTE
    bsdf = link.to_node
    assert bsdf.inputs["Roughness"].default_value == pytest.approx(importer.ROUGHNESS)
    assert bsdf.inputs["Metallic"].default_value == 0.0
    (output,) = [n for n in material.node_tree.nodes if n.type == "OUTPUT_MATERIAL"]
    assert output.inputs["Surface"].links[0].from_node == bsdf


def test_plain_mesh_gets_a_grey_material(tmp_path, clean_scene):
    obj = importer.update_object(
        None, "Result", clean_scene.collection, importer.read_mesh_npz(write_npz(tmp_path / "b.npz", **box_arrays()))
    )
    assert links_into(obj.active_material, "Base Color") == []
    bsdf = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert tuple(bsdf.inputs["Base Color"].default_value) == pytest.approx(importer.NEUTRAL_GREY)


def test_texture_material_packs_an_srgb_image_that_outlives_the_job_folder(tmp_path, clean_scene):
    job = tmp_path / "job"
    job.mkdir()
    arrays = grid_arrays()
    write_png(job / "mesh_texture.png", two_band_texture())
    npz = write_npz(job / "mesh.npz", **arrays, texture=np.array("mesh_texture.png"))
    read = importer.read_mesh_npz(npz)
    assert read.texture_path == (job / "mesh_texture.png").resolve()
    obj = importer.update_object(None, "Result", clean_scene.collection, read)

    (link,) = links_into(obj.active_material, "Base Color")  # the texture wins over the vertex colours
    texture = link.from_node
    assert texture.bl_idname == "ShaderNodeTexImage" and link.from_socket.name == "Color"
    image = texture.image
    assert image.packed_file is not None
    assert image.colorspace_settings.name == "sRGB"
    assert obj.data.color_attributes.get(importer.COLOR_ATTRIBUTE) is not None  # kept on the mesh all the same

    shutil.rmtree(job)
    assert tuple(image.size) == (16, 16)  # decoded from the packed bytes: the folder is gone
    # Blender samples (u, v) at pixel row v·H counted from the bottom; v up in the file means the PNG's top half
    # (red) is at v > 0.5. Check that corners with large v land on red texels.
    pixels = np.empty(16 * 16 * 4, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(16, 16, 4)
    uv = corner_uvs(obj.data, importer.UV_MAP).reshape(-1, 2)
    rows = np.minimum((uv[:, 1] * 16).astype(int), 15)
    sampled = pixels[rows, np.minimum((uv[:, 0] * 16).astype(int), 15), :3]
    top = uv[:, 1] > 0.6
    assert np.array_equal(sampled[top], np.tile([1.0, 0.0, 0.0], (int(top.sum()), 1)))
    bottom = uv[:, 1] < 0.4
    assert np.array_equal(sampled[bottom], np.tile([0.0, 0.0, 1.0], (int(bottom.sum()), 1)))


# ------------------------------------------------------------------------------------------------------------
# Files written by the real backend exporter


def test_files_from_the_backend_exporter(tmp_path, clean_scene):
    import torch

    from backend.export import ExportConfig, export_mesh
    from backend.mesh import Mesh

    arrays = grid_arrays()
    srgb = torch.rand(len(arrays["positions"]), 3, generator=torch.Generator().manual_seed(1))
    coloured = Mesh(torch.from_numpy(arrays["positions"]), torch.from_numpy(arrays["triangles"]).long(), srgb)
    files = export_mesh(coloured, tmp_path / "coloured", ExportConfig(formats=("npz",)))
    obj = importer.update_object(None, "Coloured", clean_scene.collection, importer.read_mesh_npz(files["npz"]))
    assert np.array_equal(mesh_positions(obj.data), arrays["positions"])
    assert np.array_equal(mesh_triangles(obj.data), arrays["triangles"])
    values = np.empty(len(obj.data.vertices) * 4, np.float32)
    obj.data.color_attributes[importer.COLOR_ATTRIBUTE].data.foreach_get("color", values)
    values = values.reshape(-1, 4)[:, :3]
    with np.load(files["npz"]) as npz:
        stored = npz["vertex_colors"]
    assert np.abs(values - srgb_to_linear(stored[:, :3] / 255.0)).max() < 1e-7  # measured 2.9e-8
    # Against the float colours the exporter got: half a byte step through the decoding's slope (≤ 2.4 / 1.055).
    assert np.abs(values - srgb_to_linear(srgb.numpy())).max() < 4.5e-3  # measured 4.4e-3; bound 4.46e-3

    texture = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(2))
    textured = Mesh(
        torch.from_numpy(arrays["positions"]),
        torch.from_numpy(arrays["triangles"]).long(),
        uvs=torch.from_numpy(arrays["uvs"]),
        texture=texture,
    )
    files = export_mesh(textured, tmp_path / "textured", ExportConfig(formats=("npz",)))
    read = importer.read_mesh_npz(files["npz"])
    assert read.texture_path == files["texture"].resolve()
    obj = importer.update_object(None, "Textured", clean_scene.collection, read)
    assert np.array_equal(corner_uvs(obj.data, importer.UV_MAP), arrays["uvs"])
    image = links_into(obj.active_material, "Base Color")[0].from_node.image
    assert image.packed_file is not None and tuple(image.size) == (8, 8)
    pixels = np.empty(8 * 8 * 4, np.float32)
    image.pixels.foreach_get(pixels)  # bottom row first; sRGB bytes / 255
    expected = np.round(texture.numpy()[::-1] * 255.0) / 255.0
    assert np.abs(pixels.reshape(8, 8, 4)[..., :3] - expected).max() < 1e-7  # measured 6.0e-8 (same bytes)


# ------------------------------------------------------------------------------------------------------------
# Updating in place and removing


def test_updates_in_place_leave_one_object_and_no_orphans(tmp_path, clean_scene):
    job = tmp_path / "job"
    job.mkdir()
    write_png(job / "mesh_texture.png", two_band_texture())
    arrays = grid_arrays()
    coloured = importer.read_mesh_npz(write_npz(job / "coloured.npz", **arrays))
    textured = importer.read_mesh_npz(write_npz(job / "textured.npz", **arrays, texture=np.array("mesh_texture.png")))
    box = importer.read_mesh_npz(write_npz(job / "box.npz", **box_arrays()))

    collection = bpy.data.collections.new("Results")
    clean_scene.collection.children.link(collection)
    obj = importer.update_object(None, "Result", collection, coloured)
    obj.matrix_world[0][3] = 5.0  # the user moved it meanwhile
    for step, arrays_now in enumerate([textured, textured, box, coloured, textured]):
        same = importer.update_object(obj, "Result", collection, arrays_now)
        assert same == obj, step
        assert data_names() == {
            "objects": ["Result"],
            "meshes": ["Result"],
            "materials": ["Result"],
            "images": ["Result texture"] if arrays_now.texture_path else [],
        }, step
    assert len(obj.data.vertices) == len(arrays["positions"])
    assert list(obj.users_collection) == [collection]
    assert np.array_equal(np.array(obj.matrix_world), np.eye(4))


def test_update_makes_a_new_object_when_the_user_deleted_the_old_one(tmp_path, clean_scene):
    read = importer.read_mesh_npz(write_npz(tmp_path / "box.npz", **box_arrays()))
    obj = importer.update_object(None, "Result", clean_scene.collection, read)
    bpy.data.objects.remove(obj)
    again = importer.update_object(obj, "Result", clean_scene.collection, read)
    assert again.name == "Result" and len(bpy.data.objects) == 1


def test_update_refuses_a_non_mesh_object(tmp_path, clean_scene):
    read = importer.read_mesh_npz(write_npz(tmp_path / "box.npz", **box_arrays()))
    empty = bpy.data.objects.new("Empty", None)
    with pytest.raises(TypeError, match="not a mesh object"):
        importer.update_object(empty, "Result", clean_scene.collection, read)
    assert len(bpy.data.meshes) == 0


def test_remove_object_leaves_nothing_behind(tmp_path, clean_scene):
    write_png(tmp_path / "t.png", two_band_texture())
    read = importer.read_mesh_npz(write_npz(tmp_path / "m.npz", **grid_arrays(), texture=np.array("t.png")))
    obj = importer.update_object(None, "Result", clean_scene.collection, read)
    importer.remove_object(obj)
    assert data_names() == {"objects": [], "meshes": [], "materials": [], "images": []}
    importer.remove_object(obj)  # already gone: nothing to do
    importer.remove_object(None)


def test_remove_object_keeps_a_material_something_else_uses(tmp_path, clean_scene):
    read = importer.read_mesh_npz(write_npz(tmp_path / "b.npz", **box_arrays()))
    obj = importer.update_object(None, "Result", clean_scene.collection, read)
    other = bpy.data.meshes.new("Other")
    other.materials.append(obj.active_material)
    importer.remove_object(obj)
    assert data_names()["materials"] == ["Result"] and data_names()["meshes"] == ["Other"]


# ------------------------------------------------------------------------------------------------------------
# Broken files


def _edges(arrays: dict, spoil) -> dict[str, np.ndarray]:
    """The backend's edge arrays of ``arrays``, passed through ``spoil(edges, corner_edges)``."""
    from backend.export import mesh_edges

    edges, corner_edges = spoil(*mesh_edges(arrays["triangles"], len(arrays["positions"])))
    return {"edges": edges, "corner_edges": corner_edges}


def broken_cases() -> dict[str, tuple[dict, str]]:
    box = box_arrays()
    cases = {
        "missing triangles": ({"positions": box["positions"]}, "'triangles' is missing"),
        "positions not (N, 3)": (dict(box, positions=box["positions"][:, :2]), r"'positions' must be \(N, 3\)"),
        "no vertices": (dict(box, positions=np.zeros((0, 3), np.float32)), "N > 0"),
        "text positions": (dict(box, positions=np.array([["a", "b", "c"]])), "'positions' must hold numbers"),
        "NaN position": (dict(box, positions=np.where(np.eye(8, 3) > 0, np.nan, box["positions"])), "NaN"),
        "index out of range": (dict(box, triangles=box["triangles"] + 1), r"indices span \[1, 8\] but there are 8"),
        "negative index": (dict(box, triangles=box["triangles"] - 1), r"span \[-1, 6\]"),
        "all degenerate": (dict(box, triangles=np.zeros((3, 3), np.int32)), "every triangle repeats a vertex"),
        "float colours": (dict(box, vertex_colors=np.ones((8, 4), np.float32)), "must be uint8 \\(8, 4\\)"),
        "uvs per vertex": (dict(box, uvs=np.zeros((8, 2), np.float32)), r"'uvs' must be \(12, 3, 2\)"),
        "texture without uvs": (dict(box, texture=np.array("t.png")), "has no 'uvs'"),
        "texture path": (dict(box, uvs=np.zeros((12, 3, 2), np.float32), texture=np.array("../t.png")), "plain file"),
        "texture missing": (dict(box, uvs=np.zeros((12, 3, 2), np.float32), texture=np.array("gone.png")), "gone.png"),
        "texture not png": (dict(box, uvs=np.zeros((12, 3, 2), np.float32), texture=np.array("t.txt")), "not a PNG"),
        "edges not (E, 2)": (dict(box, **_edges(box, lambda e, c: (e[:, :1], c))), "do not fit the triangles"),
        "corner edge out of range": (dict(box, **_edges(box, lambda e, c: (e, c + 1))), "points outside 'edges'"),
        "corner edges shuffled": (dict(box, **_edges(box, lambda e, c: (e, c[::-1].copy()))), "does not match"),
    }
    return cases


@pytest.mark.parametrize("case", list(broken_cases()))
def test_broken_file_gives_a_clear_error(tmp_path, case):
    arrays, message = broken_cases()[case]
    write_png(tmp_path / "t.png", two_band_texture(4))
    (tmp_path / "t.txt").write_text("not an image")
    path = write_npz(tmp_path / "mesh.npz", **arrays)
    with pytest.raises(importer.MeshFileError, match=message) as error:
        importer.read_mesh_npz(path)
    assert str(path) in str(error.value)


def test_unreadable_files_give_a_clear_error(tmp_path):
    with pytest.raises(importer.MeshFileError, match="mesh file not found"):
        importer.read_mesh_npz(tmp_path / "nothing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(importer.MeshFileError, match="not a readable .npz mesh file"):
        importer.read_mesh_npz(tmp_path / "garbage.npz")
    box = box_arrays()
    pickled = write_npz(tmp_path / "pickled.npz", **box, vertex_colors=np.array([{"a": 1}], dtype=object))
    with pytest.raises(importer.MeshFileError, match="not a readable .npz mesh file"):
        importer.read_mesh_npz(pickled)


def test_srgb_table_matches_the_transfer_function():
    table = importer.linear_colors(np.arange(256, dtype=np.uint8).repeat(4).reshape(256, 4))
    expected = srgb_to_linear(np.arange(256) / 255.0)
    assert np.abs(table[:, 0] - expected).max() < 1e-7  # measured 2.9e-8 (float32 rounding)
    assert np.abs(table[:, 3] - np.arange(256) / 255.0).max() < 2e-7  # measured 7.4e-8
    assert math.isclose(float(table[10, 0]), 10 / 255 / 12.92, rel_tol=1e-6)  # the linear segment
