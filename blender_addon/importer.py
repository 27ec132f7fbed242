"""The backend's mesh ``.npz`` → a Blender object, built through the attribute API (no file parsing in Blender).

The file layout (written by ``backend/export.py``): float32 ``positions`` (N, 3) in the scene's world frame;
int32 ``triangles`` (M, 3); optional uint8 ``vertex_colors`` (N, 4) sRGB-encoded bytes; optional float32 ``uvs``
(M, 3, 2) per triangle corner, v up (Blender's own UV convention, so no flip); with the UVs, a unicode scalar
``texture`` naming a PNG in the same folder (row 0 = top of the image, sRGB).

What the object gets:

* geometry: one polygon per triangle, corner order = triangle order; triangles that repeat a vertex (zero area,
  invalid in Blender) are dropped when the file is read;
* shading: smooth, with edges sharper than :data:`SMOOTH_ANGLE` marked sharp (what Blender's "Smooth by Angle"
  does): a dense reconstructed surface reads as a surface, not as facets, and creases of a decimated mesh stay
  crisp. ``smooth_angle=None`` gives flat shading;
* vertex colours: a ``FLOAT_COLOR`` point attribute named :data:`COLOR_ATTRIBUTE` holding *linear* values (the
  bytes are decoded with the exact sRGB transfer function), fed to the Principled BSDF by a Color Attribute node;
* UVs: a UV map named :data:`UV_MAP`; the texture PNG is loaded as an sRGB image and *packed* into the .blend,
  so the result survives deleting the job folder; an Image Texture node feeds the Principled BSDF. When a file
  has both a texture and vertex colours, the texture is the colour (the attribute stays on the mesh);
* material: Principled BSDF, roughness :data:`ROUGHNESS`, metallic 0, default specular: a matte look that does
  not add shine the images never showed.

The functions that touch ``bpy.data`` (:func:`build_mesh`, :func:`material_for`, :func:`update_object`,
:func:`remove_object`) must run on Blender's main thread (the add-on calls them from its ``drain()``). The
object's matrix is the identity: the vertices already are world coordinates.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

COLOR_ATTRIBUTE = "Color"
UV_MAP = "UVMap"
SMOOTH_ANGLE = math.radians(30.0)
ROUGHNESS = 0.8
NEUTRAL_GREY = (0.5, 0.5, 0.5, 1.0)  # base colour of a mesh with neither vertex colours nor a texture

_KEYS = ("positions", "triangles", "vertex_colors", "uvs", "texture", "edges", "corner_edges")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MeshFileError(ValueError):
    """A mesh ``.npz`` (or the texture it names) is missing, unreadable or breaks the layout."""


@dataclass(frozen=True)
class MeshArrays:
    """The validated contents of a mesh ``.npz``.

    ``positions`` (N, 3) float32, world frame; ``triangles`` (M, 3) int32, every index in [0, N), no repeated
    vertex within a triangle; ``vertex_colors`` (N, 4) uint8 sRGB bytes or None; ``uvs`` (M, 3, 2) float32 per
    corner (v up) or None; ``texture_path`` the absolute path of the texture PNG beside the file, or None.
    """

    positions: np.ndarray
    triangles: np.ndarray
    vertex_colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture_path: Path | None = None
    dropped_triangles: int = 0
    """How many zero-area triangles (a vertex repeated) the file had; they are not in ``triangles``."""
    edges: np.ndarray | None = None
    """(E, 2) int32 unique edges (lower vertex index first) from the file, or None: Blender computes them while
    building (a file without them, or one whose zero-area triangles were dropped)."""
    corner_edges: np.ndarray | None = None
    """(3M,) int32: the edge from each triangle corner to the next corner, an index into ``edges``."""


# ------------------------------------------------------------------------------------------------------------
# Reading


def read_mesh_npz(path: str | Path) -> MeshArrays:
    """Load and validate a mesh ``.npz``; raises :class:`MeshFileError` that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise MeshFileError(f"mesh file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in _KEYS if key in npz.files}  # other arrays are not decompressed
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MeshFileError(
            f"{path} is not a readable .npz mesh file ({exc}); rerun the job to write it again"
        ) from exc
    try:
        return _validated(raw, path.parent.resolve())
    except MeshFileError as exc:
        raise MeshFileError(f"{path}: {exc} (the layout is described in backend/export.py; rerun the job)") from None


def _validated(raw: dict[str, np.ndarray], folder: Path) -> MeshArrays:
    for key in ("positions", "triangles"):
        if key not in raw:
            raise MeshFileError(f"the array '{key}' is missing (found: {sorted(raw)})")
    positions = _typed(raw["positions"], "positions", "f", np.float32)
    if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] == 0:
        raise MeshFileError(f"'positions' must be (N, 3) with N > 0, got {positions.shape}")
    if not np.isfinite(positions).all():
        raise MeshFileError("'positions' contains NaN or infinite values")
    n = positions.shape[0]

    triangles = _typed(raw["triangles"], "triangles", "iu", np.int32)
    if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.shape[0] == 0:
        raise MeshFileError(f"'triangles' must be (M, 3) with M > 0, got {triangles.shape}")
    low, high = int(raw["triangles"].min()), int(raw["triangles"].max())  # before the int32 cast could wrap
    if low < 0 or high >= n:
        raise MeshFileError(f"'triangles' indices span [{low}, {high}] but there are {n} positions")

    vertex_colors = None
    if "vertex_colors" in raw:
        vertex_colors = raw["vertex_colors"]
        if vertex_colors.dtype != np.uint8 or vertex_colors.shape != (n, 4):
            raise MeshFileError(
                f"'vertex_colors' must be uint8 ({n}, 4) sRGB bytes, got {vertex_colors.dtype} {vertex_colors.shape}"
            )

    uvs = None
    if "uvs" in raw:
        uvs = _typed(raw["uvs"], "uvs", "f", np.float32)
        if uvs.shape != (triangles.shape[0], 3, 2):
            raise MeshFileError(f"'uvs' must be ({triangles.shape[0]}, 3, 2) per-corner coordinates, got {uvs.shape}")
        if not np.isfinite(uvs).all():
            raise MeshFileError("'uvs' contains NaN or infinite values")

    texture_path = None
    if "texture" in raw:
        texture_path = _texture_path(raw["texture"], folder)
        if uvs is None:
            raise MeshFileError(f"it names the texture {texture_path.name} but has no 'uvs' to map it")

    t = triangles
    degenerate = (t[:, 0] == t[:, 1]) | (t[:, 1] == t[:, 2]) | (t[:, 0] == t[:, 2])
    dropped = int(np.count_nonzero(degenerate))
    if dropped:
        if dropped == t.shape[0]:
            raise MeshFileError("every triangle repeats a vertex (the mesh has no area)")
        keep = ~degenerate
        triangles = np.ascontiguousarray(triangles[keep])
        uvs = None if uvs is None else np.ascontiguousarray(uvs[keep])
    edges, corner_edges = (None, None) if dropped else _checked_edges(raw, triangles)
    return MeshArrays(positions, triangles, vertex_colors, uvs, texture_path, dropped, edges, corner_edges)


def _checked_edges(raw: dict[str, np.ndarray], triangles: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The file's ``edges`` / ``corner_edges`` when both are there and every corner's edge joins that corner's
    vertex and the next one (so Blender gets a consistent mesh), else (None, None): they are computed again."""
    if "edges" not in raw or "corner_edges" not in raw:
        return None, None
    edges = _typed(raw["edges"], "edges", "iu", np.int32)
    corner_edges = _typed(raw["corner_edges"], "corner_edges", "iu", np.int32).reshape(-1)
    if edges.ndim != 2 or edges.shape[1] != 2 or corner_edges.shape[0] != triangles.size or edges.shape[0] == 0:
        raise MeshFileError(f"'edges' {edges.shape} / 'corner_edges' {corner_edges.shape} do not fit the triangles")
    if int(raw["corner_edges"].min()) < 0 or int(raw["corner_edges"].max()) >= edges.shape[0]:
        raise MeshFileError("'corner_edges' points outside 'edges'")
    start, end = triangles.reshape(-1), np.roll(triangles, -1, axis=1).reshape(-1)
    pairs = edges[corner_edges]
    if not np.array_equal(pairs.min(axis=1), np.minimum(start, end)) or not np.array_equal(
        pairs.max(axis=1), np.maximum(start, end)
    ):
        raise MeshFileError("'corner_edges' does not match the triangles' corners")
    return edges, corner_edges


def _typed(array: np.ndarray, key: str, kinds: str, dtype: type) -> np.ndarray:
    """``array`` as a C-contiguous ``dtype`` array (no copy when it already is); its dtype kind must be in
    ``kinds`` ('f' float, 'i'/'u' integer)."""
    if array.dtype.kind not in kinds:
        raise MeshFileError(f"'{key}' must hold numbers of type {np.dtype(dtype).name}, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def _texture_path(value: np.ndarray, folder: Path) -> Path:
    if value.ndim != 0 or value.dtype.kind != "U":
        raise MeshFileError(f"'texture' must be a string scalar naming a PNG, got {value.dtype} {value.shape}")
    name = str(value)
    if not name or Path(name).name != name:
        raise MeshFileError(f"'texture' must be a plain file name in the mesh's folder, got {name!r}")
    path = folder / name
    try:
        with open(path, "rb") as f:
            signature = f.read(len(_PNG_SIGNATURE))
    except OSError as exc:
        raise MeshFileError(
            f"its texture {path} cannot be read ({exc.strerror}); it must sit beside the mesh"
        ) from None
    if signature != _PNG_SIGNATURE:
        raise MeshFileError(f"its texture {path} is not a PNG file")
    return path


# ------------------------------------------------------------------------------------------------------------
# Colour


def _srgb_byte_to_linear_table() -> np.ndarray:
    """(256,) float32: the exact sRGB decoding (IEC 61966-2-1) of every byte value."""
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_colors(vertex_colors: np.ndarray) -> np.ndarray:
    """(N, 4) uint8 sRGB bytes → (N, 4) float32 linear RGB with linear alpha (alpha is never gamma-encoded)."""
    out = np.empty(vertex_colors.shape, dtype=np.float32)
    out[:, :3] = _srgb_byte_to_linear_table()[vertex_colors[:, :3]]
    out[:, 3] = vertex_colors[:, 3] * np.float32(1.0 / 255.0)
    return out


# ------------------------------------------------------------------------------------------------------------
# Building the datablocks


def build_mesh(name: str, arrays: MeshArrays, *, smooth_angle: float | None = SMOOTH_ANGLE) -> bpy.types.Mesh:
    """A new mesh datablock from ``arrays``: geometry, the colour attribute and the UV map (no material).

    ``smooth_angle`` (radians): smooth shading with edges sharper than it marked sharp; None: flat shading.
    """
    n, m = arrays.positions.shape[0], arrays.triangles.shape[0]
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    mesh.loops.add(3 * m)
    mesh.polygons.add(m)
    mesh.attributes["position"].data.foreach_set("vector", arrays.positions.reshape(-1))
    mesh.attributes[".corner_vert"].data.foreach_set("value", arrays.triangles.reshape(-1))
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * m, 3, dtype=np.int32))
    if arrays.edges is None:
        mesh.update(calc_edges=True)
    else:  # the file's edges (the backend writes them): a third of the build's time saved
        mesh.edges.add(arrays.edges.shape[0])
        mesh.attributes[".edge_verts"].data.foreach_set("value", arrays.edges.reshape(-1))
        mesh.attributes[".corner_edge"].data.foreach_set("value", arrays.corner_edges)
        mesh.update()

    if smooth_angle is None:
        mesh.attributes.new("sharp_face", "BOOLEAN", "FACE").data.foreach_set("value", np.ones(m, dtype=bool))
    else:
        mesh.set_sharp_from_angle(angle=smooth_angle)

    if arrays.vertex_colors is not None:
        colors = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        colors.data.foreach_set("color", linear_colors(arrays.vertex_colors).reshape(-1))
        mesh.color_attributes.active_color = colors
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index

    if arrays.uvs is not None:
        uv_map = mesh.uv_layers.new(name=UV_MAP, do_init=False)
        mesh.attributes[uv_map.name].data.foreach_set("vector", arrays.uvs.reshape(-1))
        mesh.uv_layers.active = uv_map
    return mesh


def material_for(arrays: MeshArrays, texture_path: str | Path | None, name: str) -> bpy.types.Material:
    """A new material for a mesh built from ``arrays``.

    ``texture_path``: the PNG to map with the UVs (None: ``arrays.texture_path``); it is loaded as sRGB and packed
    into the .blend. Without a texture, vertex colours (if any) are the base colour; with neither, a neutral grey.
    """
    texture_path = arrays.texture_path if texture_path is None else Path(texture_path)
    material = bpy.data.materials.new(name)
    try:
        _build_nodes(material, arrays, texture_path)
    except BaseException:
        bpy.data.materials.remove(material)
        raise
    return material


def _build_nodes(material: bpy.types.Material, arrays: MeshArrays, texture_path: Path | None) -> None:
    """Output ← Principled BSDF ← (Image Texture | Color Attribute | a grey constant), in a fresh node tree."""
    if material.node_tree is None:  # Blender 4.x: a new material has no node tree yet (5.x: always has one)
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    output = nodes.new("ShaderNodeOutputMaterial")
    output.location = (300, 0)
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.location = (0, 0)
    bsdf.inputs["Roughness"].default_value = ROUGHNESS
    bsdf.inputs["Metallic"].default_value = 0.0
    links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])

    if texture_path is not None and arrays.uvs is not None:
        texture = nodes.new("ShaderNodeTexImage")
        texture.location = (-350, 0)
        texture.image = _packed_image(texture_path, f"{material.name} texture")
        texture.extension = "EXTEND"  # the atlas charts are dilated; wrapping would bleed the opposite edge in
        texture.interpolation = "Linear"
        links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    elif arrays.vertex_colors is not None:
        attribute = nodes.new("ShaderNodeVertexColor")
        attribute.location = (-300, 0)
        attribute.layer_name = COLOR_ATTRIBUTE
        links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        bsdf.inputs["Base Color"].default_value = NEUTRAL_GREY


def _packed_image(path: Path, name: str) -> bpy.types.Image:
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError as exc:
        raise MeshFileError(f"cannot load the texture {path}: {exc}") from None
    image.name = name
    image.colorspace_settings.name = "sRGB"
    image.pack()  # the PNG's bytes as they are on disk, not re-encoded
    return image


# ------------------------------------------------------------------------------------------------------------
# Objects


def update_object(
    obj: bpy.types.Object | None,
    name: str,
    collection: bpy.types.Collection,
    arrays: MeshArrays,
    texture_path: str | Path | None = None,
) -> bpy.types.Object:
    """Show ``arrays`` as an object: a new one linked to ``collection``, or ``obj`` with its mesh replaced.

    A replaced mesh, and its materials and images, are removed once nothing else uses them, so a stream of
    previews leaves exactly one object and one set of datablocks. ``obj`` may be an object the user deleted
    meanwhile (a new one is made). The object keeps its name and collections; its matrix is reset to the
    identity, it is made selectable. ``texture_path`` as in :func:`material_for`. Returns the object.
    """
    obj = _alive(obj)
    if obj is not None and obj.type != "MESH":
        raise TypeError(f"cannot show a mesh on {obj.name!r}: it is a {obj.type.lower()} object, not a mesh object")
    mesh = build_mesh(name, arrays)
    try:
        material = material_for(arrays, texture_path, name)
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    mesh.materials.append(material)

    if obj is None:
        obj = bpy.data.objects.new(name, mesh)
        collection.objects.link(obj)
    else:
        old_mesh = obj.data
        obj.data = mesh
        _remove_mesh_if_unused(old_mesh)
        _rename(mesh, bpy.data.meshes, name)  # the old datablocks held the plain names; take them over
        _rename(material, bpy.data.materials, name)
        for image in _images_of(material):
            _rename(image, bpy.data.images, f"{name} texture")
    obj.matrix_world = Matrix.Identity(4)
    obj.hide_select = False
    return obj


def remove_object(obj: bpy.types.Object | None) -> None:
    """Remove ``obj`` with its mesh, materials and images where nothing else uses them (a failed or cancelled
    job). An object already deleted, or None, is a no-op."""
    obj = _alive(obj)
    if obj is None:
        return
    data = obj.data
    bpy.data.objects.remove(obj)
    if isinstance(data, bpy.types.Mesh):
        _remove_mesh_if_unused(data)


def _alive(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """``obj``, or None when it is None or its datablock was removed (e.g. the user deleted the preview)."""
    if obj is None:
        return None
    try:
        obj.name  # noqa: B018  (raises ReferenceError for a removed datablock)
    except ReferenceError:
        return None
    return obj


def _images_of(material: bpy.types.Material) -> list[bpy.types.Image]:
    if material.node_tree is None:
        return []
    return [n.image for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None]


def _rename(datablock: bpy.types.ID, same_kind: bpy.types.bpy_prop_collection, name: str) -> None:
    """Give ``datablock`` the name ``name`` unless another datablock in ``same_kind`` holds it."""
    if datablock.name != name and name not in same_kind:
        datablock.name = name


def _remove_mesh_if_unused(mesh: bpy.types.Mesh) -> None:
    """Remove ``mesh`` if no object uses it, then its materials and their images if they became unused."""
    if mesh.users > 0:
        return
    materials = [m for m in mesh.materials if m is not None]
    bpy.data.meshes.remove(mesh)
    for material in materials:
        if material.users > 0:
            continue
        images = _images_of(material)
        bpy.data.materials.remove(material)
        for image in images:
            if image.users == 0:
                bpy.data.images.remove(image)
