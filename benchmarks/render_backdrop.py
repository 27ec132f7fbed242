"""Render a mesh standing on a table in a furnished room, with Blender (Cycles, CPU): a hard case for photos
without masks. Runs inside Blender (the ``bpy`` module of the dev environment, or ``blender -b --python``):

    python benchmarks/render_backdrop.py --mesh ../shared/data/meshes/spot/spot_triangulated.obj --output DIR
           [--views 24] [--size 320] [--samples 32]

The object is scaled so its longest side is 1 and set on a wooden table top (z = 0), with three other objects
on the table around it (outside a box 1.3× the object's), in a closed room with brick walls, a checker floor and
two lights. Cameras come from the add-on's :func:`ring_cameras` (rings at 35° and 15° above the table, 35 mm,
framing the object with a wide margin so the table, the other objects and the walls fill much of each photo)
and are rendered with the add-on's :func:`render_views`, twice: the photos (the room fills every pixel) and the
object alone (its alpha is the object's true mask, for scoring only).

Writes ``DIR/photos/NAME.png`` (RGB), ``DIR/masks/NAME.png`` (greyscale), ``DIR/cameras.json`` (per view:
``name``, OpenCV ``world_to_camera``, ``K``, ``width``, ``height``, from the add-on's camera conversion) and
``DIR/object.npz`` (the object's world-space ``vertices`` and ``faces``, the ground truth). Never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from blender_addon.cameras import CameraData, RenderSettings, intrinsics, world_to_camera  # noqa: E402
from blender_addon.render_views import render_views, ring_cameras, selection_bounds  # noqa: E402

TABLE_SIZE = (2.6, 2.0, 0.06)
ROOM_SIZE = (9.0, 9.0, 5.0)
CLUTTER = (  # (primitive, location of its base centre on the table, size, base colour)
    ("cylinder", (0.95, 0.45), 0.40, (0.70, 0.10, 0.08)),
    ("cone", (-0.90, -0.35), 0.45, (0.10, 0.45, 0.15)),
    ("sphere", (0.25, -0.85), 0.26, (0.15, 0.25, 0.70)),
)


def import_mesh(path: Path) -> bpy.types.Object:
    """The mesh file's objects joined into one mesh object."""
    before = set(bpy.data.objects)
    if path.suffix.lower() in (".glb", ".gltf"):
        bpy.ops.import_scene.gltf(filepath=str(path))
    elif path.suffix.lower() == ".obj":
        bpy.ops.wm.obj_import(filepath=str(path))
    elif path.suffix.lower() == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path))
    else:
        raise SystemExit(f"unsupported mesh file {path} (use .obj, .glb, .gltf or .ply)")
    meshes = [obj for obj in set(bpy.data.objects) - before if obj.type == "MESH"]
    if not meshes:
        raise SystemExit(f"{path} holds no mesh")
    for obj in set(bpy.data.objects) - before - set(meshes):
        bpy.data.objects.remove(obj)
    bpy.ops.object.select_all(action="DESELECT")
    for obj in meshes:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = meshes[0]
    if len(meshes) > 1:
        bpy.ops.object.join()
    obj = bpy.context.view_layer.objects.active
    bpy.ops.object.parent_clear(type="CLEAR_KEEP_TRANSFORM")
    bpy.ops.object.transform_apply(location=True, rotation=True, scale=True)
    return obj


def stand_on_table(obj: bpy.types.Object) -> None:
    """Scale ``obj`` so its longest side is 1, centred over the origin with its lowest point at z = 0."""
    bounds = selection_bounds([obj], bpy.context.evaluated_depsgraph_get())
    scale = 1.0 / max(bounds.size)
    obj.scale = (scale,) * 3
    low = bounds.centre - bounds.size / 2
    obj.location = (-bounds.centre.x * scale, -bounds.centre.y * scale, -low.z * scale)
    bpy.context.view_layer.update()


def material(name: str, build) -> bpy.types.Material:
    """A node material whose Principled BSDF's base colour ``build(nodes, links)`` returns a socket (or colour)."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = 0.6
    colour = build(nodes, links)
    if isinstance(colour, tuple):
        bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    else:
        links.new(colour, bsdf.inputs["Base Color"])
    return mat


def wood(nodes, links):
    wave = nodes.new("ShaderNodeTexWave")
    wave.inputs["Scale"].default_value = 3.0
    wave.inputs["Distortion"].default_value = 6.0
    ramp = nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color = (0.18, 0.08, 0.03, 1.0)
    ramp.color_ramp.elements[1].color = (0.55, 0.32, 0.14, 1.0)
    links.new(wave.outputs["Fac"], ramp.inputs["Fac"])
    return ramp.outputs["Color"]


def bricks(nodes, links):
    brick = nodes.new("ShaderNodeTexBrick")
    brick.inputs["Scale"].default_value = 4.0
    brick.inputs["Color1"].default_value = (0.45, 0.18, 0.12, 1.0)
    brick.inputs["Color2"].default_value = (0.62, 0.50, 0.40, 1.0)
    brick.inputs["Mortar"].default_value = (0.85, 0.85, 0.80, 1.0)
    return brick.outputs["Color"]


def checker(nodes, links):
    check = nodes.new("ShaderNodeTexChecker")
    check.inputs["Scale"].default_value = 12.0
    check.inputs["Color1"].default_value = (0.08, 0.08, 0.09, 1.0)
    check.inputs["Color2"].default_value = (0.75, 0.72, 0.65, 1.0)
    return check.outputs["Color"]


def add_box(name: str, size, centre, mat) -> bpy.types.Object:
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=centre)
    obj = bpy.context.active_object
    obj.name = name
    obj.scale = size
    obj.data.materials.append(mat)
    return obj


def build_backdrop() -> list[bpy.types.Object]:
    """The table, the room and the clutter on the table; returns their objects."""
    backdrop = [add_box("table", TABLE_SIZE, (0.0, 0.0, -TABLE_SIZE[2] / 2), material("wood", wood))]
    walls = add_box("room", ROOM_SIZE, (0.0, 0.0, ROOM_SIZE[2] / 2 - 1.0), material("bricks", bricks))
    floor = add_box("floor", (ROOM_SIZE[0] * 0.98, ROOM_SIZE[1] * 0.98, 0.02), (0.0, 0.0, -0.99),
                    material("checker", checker))  # fmt: skip
    backdrop += [walls, floor]
    for kind, (x, y), size, colour in CLUTTER:
        add = {"cylinder": bpy.ops.mesh.primitive_cylinder_add, "cone": bpy.ops.mesh.primitive_cone_add,
               "sphere": bpy.ops.mesh.primitive_uv_sphere_add}[kind]  # fmt: skip
        add(location=(x, y, size / 2))
        obj = bpy.context.active_object
        obj.name = kind
        obj.scale = (size / 2,) * 3
        obj.data.materials.append(material(kind, lambda nodes, links, c=colour: c))
        backdrop.append(obj)
    for name, location, energy, size in (("key", (2.0, -2.5, 3.5), 900.0, 2.0), ("fill", (-3.0, 2.0, 3.0), 400.0, 3.0)):
        light = bpy.data.lights.new(name, "AREA")
        light.energy, light.size = energy, size
        obj = bpy.data.objects.new(name, light)
        obj.location = location
        obj.rotation_euler = (Vector((0.0, 0.0, 0.3)) - Vector(location)).to_track_quat("-Z", "Y").to_euler()
        bpy.context.scene.collection.objects.link(obj)
    return backdrop


def camera_entry(camera: bpy.types.Object, scene) -> dict:
    data = camera.data
    lens = CameraData(name=camera.name, type=data.type, lens=data.lens, sensor_width=data.sensor_width,
                      sensor_height=data.sensor_height, sensor_fit=data.sensor_fit)  # fmt: skip
    render = RenderSettings(resolution_x=scene.render.resolution_x, resolution_y=scene.render.resolution_y)
    K, width, height = intrinsics(lens, render)
    return {"name": camera.name, "world_to_camera": world_to_camera(np.array(camera.matrix_world)).tolist(),
            "K": K.tolist(), "width": width, "height": height}  # fmt: skip


def object_arrays(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """World-space vertices (N, 3) float64 and triangles (M, 3) int64 of the evaluated object."""
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    mesh.calc_loop_triangles()
    vertices = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", vertices)
    faces = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
    mesh.loop_triangles.foreach_get("vertices", faces)
    matrix = np.array(obj.matrix_world)
    vertices = vertices.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    evaluated.to_mesh_clear()
    return vertices, faces.reshape(-1, 3)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", required=True, help="the object (.obj, .glb, .gltf, .ply)")
    parser.add_argument("--output", "-o", required=True, help="folder for photos/, masks/, cameras.json, object.npz")
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--size", type=int, default=320, help="longer side of the 4:3 photos in pixels")
    parser.add_argument("--samples", type=int, default=32, help="Cycles samples per pixel of the photos")
    args = parser.parse_args(argv)
    out = Path(args.output).absolute()
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = args.size, args.size * 3 // 4  # the photos: 4:3
    scene.cycles.max_bounces = 4
    obj = import_mesh(Path(args.mesh))
    stand_on_table(obj)
    backdrop = build_backdrop()
    cameras = ring_cameras(scene, [obj], count=args.views, elevations=(35.0, 15.0), lens=35.0, margin=0.9)
    bpy.context.view_layer.update()

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total}", flush=True)

    print(f"rendering {len(cameras)} photos", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        rendered = render_views(scene, cameras, scratch, resolution=args.size, samples=args.samples,
                                progress=progress)  # fmt: skip
        photos = out / "photos"
        photos.mkdir(parents=True, exist_ok=True)
        for _, path in rendered:
            save_rgb(bpy.data.images.load(str(path)), photos / path.name)
    for item in backdrop:
        item.hide_render = True
    print(f"rendering {len(cameras)} masks (the object alone)", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        rendered = render_views(scene, cameras, scratch, resolution=args.size, samples=4, progress=progress)
        masks = out / "masks"
        masks.mkdir(parents=True, exist_ok=True)
        for _, path in rendered:
            save_alpha(bpy.data.images.load(str(path)), masks / path.name)
    views = [camera_entry(camera, scene) for camera in cameras]
    (out / "cameras.json").write_text(json.dumps({"views": views}, indent=1))
    vertices, faces = object_arrays(obj)
    np.savez(out / "object.npz", vertices=vertices, faces=faces)
    print(f"wrote {out}", flush=True)
    return 0


def pixels_of(image: bpy.types.Image) -> np.ndarray:
    """(H, W, 4) float32 of a loaded image, top row first (Blender stores the bottom row first)."""
    width, height = image.size
    values = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(values)
    bpy.data.images.remove(image)
    return values.reshape(height, width, 4)[::-1]


def save_rgb(image: bpy.types.Image, path: Path) -> None:
    write_png(path, pixels_of(image)[..., :3])


def save_alpha(image: bpy.types.Image, path: Path) -> None:
    write_png(path, pixels_of(image)[..., 3:])


def write_png(path: Path, values: np.ndarray) -> None:
    """Write (H, W, C) values in [0, 1] (C = 1 or 3; already sRGB-encoded bytes / 255) as an 8-bit PNG."""
    height, width, channels = values.shape
    image = bpy.data.images.new(path.stem, width, height, alpha=False)
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[..., :3] = values if channels == 3 else values.repeat(3, axis=-1)
    image.pixels.foreach_set(rgba[::-1].ravel())
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


if __name__ == "__main__":
    sys.exit(main(sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]))
