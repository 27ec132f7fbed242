"""The add-on's scene settings: ``Scene.gtr`` (one PointerProperty to :class:`GTR_PG_settings`).

A row of the view list is a camera + an image (+ an optional mask). The job's state while it runs lives in
:mod:`.jobs`; the fields under "Job status" only mirror it for drawing.
"""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)


def _is_camera(_self, obj) -> bool:
    return obj.type == "CAMERA"


class GTR_PG_view(bpy.types.PropertyGroup):
    """One view: a camera object and the image it saw."""

    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera)
    image: StringProperty(name="Image", subtype="FILE_PATH", description="Photo or render seen by this camera")
    mask: StringProperty(
        name="Mask", subtype="FILE_PATH", description="Optional greyscale mask (white = object); else the image's alpha"
    )
    frame: IntProperty(
        name="Frame",
        default=-1,
        min=-1,
        description="Frame whose camera pose this image shows (-1: the scene's current frame)",
    )


METHODS = [
    ("AUTO", "Auto", "GTR when a checkpoint is set, else Fit"),
    ("FIT", "Fit", "Fit a triplane field to these views: no pretrained weights needed"),
    ("GTR", "GTR", "The GTR network, feed-forward (needs a checkpoint)"),
]
PRESETS = [
    ("draft", "Draft", "Fast: a few minutes on a laptop CPU"),
    ("standard", "Standard", "Better detail; best with a CUDA GPU"),
    ("high", "High", "Most detail; CUDA GPU recommended"),
]
TEXTURES = [
    ("vertex", "Vertex Colours", "Colours stored per vertex (a Color Attribute)"),
    ("uv", "UV Texture", "A UV map and a texture image (packed into the .blend)"),
]
DEVICES = [
    ("auto", "Auto", "CUDA when the backend sees a GPU, else the CPU"),
    ("cpu", "CPU", "The CPU"),
    ("cuda", "CUDA", "The first CUDA GPU"),
]
RENDER_SOURCES = [
    ("LIT", "Lit", "The rendered image, lighting included"),
    ("ALBEDO", "Albedo", "The Diffuse Color pass: plain surface colour that relights correctly"),
]
STATES = [
    ("IDLE", "Idle", ""),
    ("STARTING", "Starting", "Waiting for the backend"),
    ("RUNNING", "Running", ""),
    ("CANCELLING", "Cancelling", ""),
]


class GTR_PG_settings(bpy.types.PropertyGroup):
    views: CollectionProperty(type=GTR_PG_view)
    active_view: IntProperty(name="Active View", default=0)
    image_folder: StringProperty(
        name="Image Folder",
        subtype="DIR_PATH",
        description="Where auto-pairing looks for images named like the cameras (or numbered by frame)",
    )
    bounds: PointerProperty(
        name="Bounds",
        type=bpy.types.Object,
        description="Optional object whose bounding box holds the subject (else found from the views' masks)",
    )

    # options (the backend's option registry: python -m backend.options)
    method: EnumProperty(name="Method", items=METHODS, default="AUTO")
    checkpoint: StringProperty(name="Checkpoint", subtype="FILE_PATH", description="GTR weights (.pth / .safetensors)")
    preset: EnumProperty(name="Preset", items=PRESETS, default="draft")
    texture: EnumProperty(name="Texture", items=TEXTURES, default="vertex")
    texture_size: IntProperty(name="Texture Size", default=1024, min=16, max=16384)
    face_budget: IntProperty(
        name="Face Budget", default=0, min=0, description="Decimate to at most this many faces (0: no decimation)"
    )
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    extra_options: StringProperty(
        name="Extra Options",
        description='More backend options as JSON, e.g. {"fit_steps": 600} (see the README\'s option table)',
    )
    work_folder: StringProperty(
        name="Job Folder",
        subtype="DIR_PATH",
        description="Where job folders (inputs, previews, results) are written (empty: a temporary folder)",
    )

    # views rendered from the scene
    ring_count: IntProperty(name="Cameras", default=12, min=3, max=64)
    render_size: IntProperty(name="Size", default=256, min=32, max=2048, subtype="PIXEL")
    render_samples: IntProperty(name="Samples", default=16, min=1, max=4096)
    render_source: EnumProperty(name="Colour", items=RENDER_SOURCES, default="LIT")

    # job status, drawn by the panel
    state: EnumProperty(name="State", items=STATES, default="IDLE")
    stage: StringProperty(name="Stage")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    eta: FloatProperty(name="ETA", default=-1.0)
    status: StringProperty(name="Status", description="What the last job did")
    status_is_error: BoolProperty(default=False)


classes = (GTR_PG_view, GTR_PG_settings)


def register_properties() -> None:
    bpy.types.Scene.gtr = PointerProperty(type=GTR_PG_settings)


def unregister_properties() -> None:
    del bpy.types.Scene.gtr
