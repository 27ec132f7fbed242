"""Procedural objects: 1–3 primitives combined by booleans, with random procedural materials.

Object ``index`` of seed ``seed`` is always the same object (its own random stream, independent of how many
objects a run makes) — up to float rounding and vertex order, as the exact boolean solver runs on threads. Each
primitive (cube, UV sphere, ico sphere, cylinder, cone, torus) gets a random non-uniform scale, a random rotation
and, after the first, an offset of 0.2–0.45 in a random direction; Boolean modifiers (union, difference, sometimes
intersection; exact solver, the operand's materials transferred) are applied one after the other, and a result
with no faces left keeps the shape from before. Each primitive has its own material: a Principled BSDF
whose base colour is a plain random colour or a noise / checker / wave / Voronoi texture (object coordinates)
between two random colours, with random roughness and sometimes some metal.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import random

import bmesh
import bpy
from mathutils import Euler, Matrix, Vector

from .layout import procedural_name

PRIMITIVES = ("cube", "uv_sphere", "ico_sphere", "cylinder", "cone", "torus")
TEXTURES = ("plain", "noise", "checker", "wave", "voronoi")
OPERATIONS = ("UNION", "DIFFERENCE", "INTERSECT")
OPERATION_WEIGHTS = (5, 4, 1)
TEXTURE_SCALES = {"noise": (1.5, 5.0), "checker": (2.0, 6.0), "wave": (1.5, 5.0), "voronoi": (3.0, 8.0)}
"""Range of each texture's Scale input (object coordinates span about 1): a few features across the object."""


def build(scene: bpy.types.Scene, seed: int, index: int) -> bpy.types.Object:
    """Add procedural object ``index`` of ``seed`` to ``scene`` (one mesh object, modifiers applied)."""
    digest = hashlib.sha256(f"gtr-procedural/{seed}/{index}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    parts = rng.choices((1, 2, 3), weights=(2, 5, 3))[0]
    base = _primitive(scene, rng, f"{procedural_name(index)}", offset=False)
    for part in range(1, parts):
        operand = _primitive(scene, rng, f"{procedural_name(index)} part {part}", offset=True)
        _apply_boolean(base, operand, rng.choices(OPERATIONS, weights=OPERATION_WEIGHTS)[0])
    base.data.set_sharp_from_angle(angle=math.radians(35.0))  # smooth curved faces, sharp creases
    return base


def _primitive(scene, rng: random.Random, name: str, offset: bool) -> bpy.types.Object:
    kind = rng.choice(PRIMITIVES)
    low, high = (0.35, 0.8) if offset else (0.5, 1.0)
    scale = Matrix.Diagonal((rng.uniform(low, high), rng.uniform(low, high), rng.uniform(low, high), 1.0))
    rotation = Euler([rng.uniform(0.0, 2.0 * math.pi) for _ in range(3)]).to_matrix().to_4x4()
    shift = Vector((0.0, 0.0, 0.0))
    if offset:  # towards the first primitive's surface, so the operand sticks out of it or cuts into it
        shift = Vector([rng.gauss(0.0, 1.0) for _ in range(3)]).normalized() * rng.uniform(0.2, 0.45)
    bm = bmesh.new()
    try:
        _add_shape(bm, kind)
        bmesh.ops.transform(bm, matrix=Matrix.Translation(shift) @ rotation @ scale, verts=bm.verts)
        bmesh.ops.recalc_face_normals(bm, faces=bm.faces)
        mesh = bpy.data.meshes.new(name)
        bm.to_mesh(mesh)
    finally:
        bm.free()
    mesh.materials.append(_material(rng, name))
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def _add_shape(bm: bmesh.types.BMesh, kind: str) -> None:
    """A closed unit-sized primitive (about [-0.5, 0.5]³) centred at the origin."""
    if kind == "cube":
        bmesh.ops.create_cube(bm, size=1.0)
    elif kind == "uv_sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=0.5)
    elif kind == "ico_sphere":
        bmesh.ops.create_icosphere(bm, subdivisions=2, radius=0.5)
    elif kind in ("cylinder", "cone"):
        tip = 0.5 if kind == "cylinder" else 0.0
        bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=32, radius1=0.5, radius2=tip, depth=1.0)
    elif kind == "torus":
        _add_torus(bm, major=0.35, minor=0.15, rings=32, sides=12)
    else:
        raise ValueError(f"unknown primitive {kind!r}")


def _add_torus(bm: bmesh.types.BMesh, major: float, minor: float, rings: int, sides: int) -> None:
    """A torus around +Z: ``rings`` × ``sides`` quads, closed."""
    verts = []
    for i in range(rings):
        u = 2.0 * math.pi * i / rings
        for j in range(sides):
            v = 2.0 * math.pi * j / sides
            radius = major + minor * math.cos(v)
            verts.append(bm.verts.new((radius * math.cos(u), radius * math.sin(u), minor * math.sin(v))))
    for i in range(rings):
        for j in range(sides):
            a, b = i * sides + j, ((i + 1) % rings) * sides + j
            c, d = ((i + 1) % rings) * sides + (j + 1) % sides, i * sides + (j + 1) % sides
            bm.faces.new((verts[a], verts[b], verts[c], verts[d]))


def _apply_boolean(base: bpy.types.Object, operand: bpy.types.Object, operation: str) -> None:
    """``base`` ← ``base`` (operation) ``operand``, applied; ``operand`` is deleted. A result without faces (a
    difference that removed everything) keeps ``base`` as it was."""
    modifier = base.modifiers.new("boolean", "BOOLEAN")
    modifier.operation = operation
    modifier.object = operand
    modifier.solver = "EXACT"
    modifier.material_mode = "TRANSFER"
    depsgraph = bpy.context.evaluated_depsgraph_get()
    depsgraph.update()
    result = bpy.data.meshes.new_from_object(base.evaluated_get(depsgraph))
    base.modifiers.remove(modifier)
    if len(result.polygons) > 0:
        old = base.data
        result.name = old.name
        base.data = result
        bpy.data.meshes.remove(old)
    else:
        bpy.data.meshes.remove(result)
    mesh = operand.data
    bpy.data.objects.remove(operand, do_unlink=True)
    bpy.data.meshes.remove(mesh)


def _colour(rng: random.Random) -> tuple[float, float, float, float]:
    """A random colour (linear RGBA) of moderate saturation and value."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.25, 0.9), rng.uniform(0.35, 0.95))
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return (*linear, 1.0)


def _material(rng: random.Random, name: str) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    nodes, links = material.node_tree.nodes, material.node_tree.links
    shader = nodes["Principled BSDF"]
    first, second = _colour(rng), _colour(rng)
    texture = rng.choice(TEXTURES)
    shader.inputs["Roughness"].default_value = rng.uniform(0.3, 0.9)
    shader.inputs["Metallic"].default_value = 0.0 if rng.random() < 0.8 else rng.uniform(0.3, 0.8)
    if texture == "plain":
        shader.inputs["Base Color"].default_value = first
        return material
    coordinates = nodes.new("ShaderNodeTexCoord")
    node_type = {
        "noise": "ShaderNodeTexNoise",
        "checker": "ShaderNodeTexChecker",
        "wave": "ShaderNodeTexWave",
        "voronoi": "ShaderNodeTexVoronoi",
    }[texture]
    node = nodes.new(node_type)
    links.new(coordinates.outputs["Object"], node.inputs["Vector"])
    node.inputs["Scale"].default_value = rng.uniform(*TEXTURE_SCALES[texture])
    if texture == "checker":
        node.inputs["Color1"].default_value, node.inputs["Color2"].default_value = first, second
        links.new(node.outputs["Color"], shader.inputs["Base Color"])
        return material
    ramp = nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color, ramp.color_ramp.elements[1].color = first, second
    links.new(node.outputs["Distance" if texture == "voronoi" else "Fac"], ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], shader.inputs["Base Color"])
    return material
