"""The one module that reads Blender camera objects and render settings; the maths lives in :mod:`.cameras`.

A view's camera is read at a frame: ``-1`` means the scene's current frame, any other value the pose (and lens)
at that frame. Poses come from the evaluated object (animation, drivers, constraints and parents applied), so
parented and scaled cameras work through ``matrix_world``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import bpy
import imbuf
import numpy as np

from .cameras import CameraData, CameraError, RenderSettings, job_view

CURRENT_FRAME = -1
"""A view's ``frame`` meaning "the camera as it is at the scene's current frame"."""


@dataclass(frozen=True)
class PosedCamera:
    """A camera's lens settings and its ``matrix_world`` ((4, 4) float64, Blender axes) at one frame."""

    data: CameraData
    matrix_world: np.ndarray


def render_settings(scene) -> RenderSettings:
    """The image-shaping render settings of ``scene``."""
    render = scene.render
    return RenderSettings(
        resolution_x=render.resolution_x,
        resolution_y=render.resolution_y,
        resolution_percentage=render.resolution_percentage,
        pixel_aspect_x=render.pixel_aspect_x,
        pixel_aspect_y=render.pixel_aspect_y,
    )


def camera_data(camera_object) -> CameraData:
    """The lens settings of a camera object (pass the evaluated object for animated lenses)."""
    if camera_object is None:
        raise CameraError("no camera set: pick a camera object.")
    if camera_object.type != "CAMERA":
        raise CameraError(f"object '{camera_object.name}' is a {camera_object.type.lower()}, not a camera.")
    data = camera_object.data
    return CameraData(
        name=camera_object.name,
        type=data.type,
        lens=data.lens,
        ortho_scale=data.ortho_scale,
        sensor_width=data.sensor_width,
        sensor_height=data.sensor_height,
        sensor_fit=data.sensor_fit,
        shift_x=data.shift_x,
        shift_y=data.shift_y,
    )


def posed_cameras(scene, requests: Sequence[tuple[object, int]]) -> list[PosedCamera]:
    """The cameras of ``requests`` (camera object, frame) as posed at their frames, in order.

    Each distinct frame is set once (``scene.frame_set``, which evaluates animation, drivers and constraints);
    the scene's current frame and subframe are restored afterwards, also when reading fails. A request that is
    not a camera raises :class:`CameraError` with ``row`` = its index.
    """
    view_layer = bpy.context.view_layer if bpy.context.scene == scene else scene.view_layers[0]
    current, subframe = scene.frame_current, scene.frame_subframe
    by_frame: dict[int, list[int]] = {}
    for index, (_, frame) in enumerate(requests):
        by_frame.setdefault(current if frame == CURRENT_FRAME else int(frame), []).append(index)
    posed: list[PosedCamera | None] = [None] * len(requests)
    try:
        for frame in sorted(by_frame, key=lambda f: (f != current, f)):  # the current frame first, as it is
            if frame != current:
                scene.frame_set(frame)
            view_layer.update()  # constraints and drivers, also at the current frame
            depsgraph = view_layer.depsgraph
            for index in by_frame[frame]:
                camera_object = requests[index][0]
                try:
                    camera_data(camera_object)  # checks it is a camera before evaluating it
                except CameraError as exc:
                    raise CameraError(str(exc), row=index) from None
                evaluated = camera_object.evaluated_get(depsgraph)
                posed[index] = PosedCamera(camera_data(evaluated), np.array(evaluated.matrix_world, dtype=np.float64))
    finally:
        if (scene.frame_current, scene.frame_subframe) != (current, subframe):
            scene.frame_set(current, subframe=subframe)
    return posed


def image_size(path: str) -> tuple[int, int]:
    """(width, height) in pixels of an image file (Blender's relative ``//`` paths resolved); raises
    :class:`CameraError` when the file is missing or unreadable. Does not add an image to ``bpy.data``."""
    absolute = bpy.path.abspath(path)
    try:
        buffer = imbuf.load(absolute)
    except (OSError, ValueError) as exc:
        raise CameraError(f"cannot read the image {absolute} ({exc}): check the path.") from None
    try:
        width, height = buffer.size
    finally:
        buffer.free()
    return int(width), int(height)


def job_views(scene, views: Sequence) -> list[dict]:
    """The ``job.json`` view entries for ``views`` (objects with ``camera``, ``image``, ``mask``, ``frame``
    attributes, such as the add-on's view rows), with K fitted to each image file's size.

    Image and mask paths are written absolute (``//`` resolved); the job writer may rewrite them. Names are the
    camera's name, with ``_f<frame>`` appended for a view at an explicit frame. A view that cannot be written
    raises :class:`CameraError` with ``row`` set to its index and the row named in the message.
    """
    render = render_settings(scene)
    for row, view in enumerate(views):
        if view.camera is None:
            raise CameraError(f"view {row + 1} has no camera: pick a camera object for it.", row=row)
    try:
        posed = posed_cameras(scene, [(view.camera, view.frame) for view in views])
    except CameraError as exc:
        raise CameraError(f"view {exc.row + 1}: {exc}", row=exc.row) from None
    entries = []
    for row, (view, camera) in enumerate(zip(views, posed)):
        name = view.camera.name if view.frame == CURRENT_FRAME else f"{view.camera.name}_f{view.frame:04d}"
        image = bpy.path.abspath(view.image)
        try:
            entries.append(
                job_view(
                    camera.data,
                    render,
                    camera.matrix_world,
                    image,
                    mask=bpy.path.abspath(view.mask) if view.mask else None,
                    name=name,
                    image_size=image_size(image),
                )
            )
        except CameraError as exc:
            raise CameraError(f"view {row + 1} ({name}): {exc}", row=row) from None
    return entries
