"""Blender cameras → the job's cameras, as pure functions over plain numbers (no bpy, no mathutils).

The job's convention (ARCHITECTURE.md), stated once:

- ``world_to_camera``: (4, 4) with OpenCV camera axes, x right, y down, z forward, in the scene's world units.
- ``K``: (3, 3) in pixels. The image's top-left *corner* is (0, 0), so pixel (column i, row j) has its centre at
  (i + 0.5, j + 0.5) and a centred camera has cx = W / 2. Perspective: u = fx·x/z + cx. Orthographic: ``fx``,
  ``fy`` are pixels per world unit and u = fx·x + cx.

Blender's side (measured with bpy 5.0.1 against ``world_to_camera_view`` and Cycles renders, see BLENDER.md):

- Image size: W = resolution_x · percentage // 100 and H = resolution_y · percentage // 100, integer division
  (Blender truncates: 99 px at 33 % renders 32 px wide).
- ``ycor = pixel_aspect_y / pixel_aspect_x``. Sensor fit AUTO is horizontal when pixel_aspect_x·W ≥
  pixel_aspect_y·H, else vertical, and always uses ``sensor_width``; HORIZONTAL uses ``sensor_width``; VERTICAL
  uses ``sensor_height``. ``viewfac`` = W (horizontal) or ycor·H (vertical).
- Perspective: fx = lens / sensor · viewfac. Orthographic: ``ortho_scale`` world units span the sensor-fit side,
  so fx = viewfac / ortho_scale. Both: fy = fx / ycor, cx = W/2 − shift_x·viewfac, cy = H/2 + shift_y·viewfac/ycor.
- Pose: ``matrix_world`` with scale removed (columns normalised), R_w2c = diag(1, −1, −1)·R_c2wᵀ, t = −R_w2c·C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
CAMERA_TYPES = {"PERSP": "perspective", "ORTHO": "orthographic"}
"""Blender camera type → the job's ``camera_type``. Anything else (PANO, CUSTOM) is rejected."""

SHEAR_TOLERANCE = 1e-5
"""Largest |cos| of the angle between two normalised axes of ``matrix_world`` accepted as orthogonal (float32
matrices of rotated, uniformly scaled parents stay below ~1e-7)."""

ASPECT_TOLERANCE_PX = 1.0
"""An image of another size than the render fits when each side is within this many pixels of the other side
scaled by the render's aspect (a resize that rounds each side to whole pixels stays within 0.5 px)."""


class CameraError(ValueError):
    """A camera that cannot become a job view; the message names the camera and says what to do.

    ``row`` is the index of the view row at fault when the caller knows it (else None).
    """

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


@dataclass(frozen=True)
class RenderSettings:
    """The scene's render settings that shape the image (Blender's ``scene.render``)."""

    resolution_x: int
    """Pixels across at 100 %."""
    resolution_y: int
    """Pixels down at 100 %."""
    resolution_percentage: int = 100
    """Scale of the rendered image in percent; the size is truncated to whole pixels."""
    pixel_aspect_x: float = 1.0
    """Horizontal pixel aspect."""
    pixel_aspect_y: float = 1.0
    """Vertical pixel aspect."""

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the rendered image in pixels (Blender truncates: ``resolution · percentage // 100``)."""
        return (
            self.resolution_x * self.resolution_percentage // 100,
            self.resolution_y * self.resolution_percentage // 100,
        )


@dataclass(frozen=True)
class CameraData:
    """A Blender camera's lens settings (``Object.data`` of a camera object), at the frame the view uses."""

    name: str
    """The camera object's name, for messages."""
    type: str
    """``PERSP``, ``ORTHO``, ``PANO`` or ``CUSTOM`` (only the first two can become job views)."""
    lens: float = 50.0
    """Focal length in millimetres (perspective)."""
    ortho_scale: float = 6.0
    """World units spanned by the sensor-fit side of the image (orthographic)."""
    sensor_width: float = 36.0
    """Millimetres; used by sensor fit AUTO and HORIZONTAL."""
    sensor_height: float = 24.0
    """Millimetres; used by sensor fit VERTICAL."""
    sensor_fit: str = "AUTO"
    """``AUTO``, ``HORIZONTAL`` or ``VERTICAL``."""
    shift_x: float = 0.0
    """Lens shift in units of the sensor-fit side."""
    shift_y: float = 0.0
    """Lens shift in units of the sensor-fit side."""


def job_camera_type(camera: CameraData) -> str:
    """``"perspective"`` or ``"orthographic"``; a panoramic or custom camera raises :class:`CameraError`."""
    if camera.type in CAMERA_TYPES:
        return CAMERA_TYPES[camera.type]
    kind = {"PANO": "panoramic", "CUSTOM": "custom (OSL)"}.get(camera.type, repr(camera.type))
    raise CameraError(
        f"camera '{camera.name}' is {kind}: only perspective and orthographic cameras can be reconstructed from. "
        "Set its Lens > Type to Perspective or Orthographic, or use another camera."
    )


def intrinsics(camera: CameraData, render: RenderSettings) -> tuple[np.ndarray, int, int]:
    """(K, W, H): the (3, 3) float64 intrinsics in pixels of the rendered image and its size (module docstring)."""
    camera_type = job_camera_type(camera)
    width, height = render.size
    if width < 1 or height < 1:
        raise CameraError(
            f"the render size is {width}x{height} px (resolution {render.resolution_x}x{render.resolution_y} at "
            f"{render.resolution_percentage} %): raise the resolution or its percentage in Output Properties."
        )
    if camera.sensor_fit not in SENSOR_FITS:
        raise CameraError(f"camera '{camera.name}' has an unknown sensor fit {camera.sensor_fit!r}.")
    ycor = render.pixel_aspect_y / render.pixel_aspect_x
    if camera.sensor_fit == "AUTO":
        horizontal = render.pixel_aspect_x * width >= render.pixel_aspect_y * height
    else:
        horizontal = camera.sensor_fit == "HORIZONTAL"
    viewfac = width if horizontal else ycor * height
    if camera_type == "perspective":
        sensor = camera.sensor_height if camera.sensor_fit == "VERTICAL" else camera.sensor_width
        if not (camera.lens > 0 and sensor > 0):
            raise CameraError(
                f"camera '{camera.name}' has focal length {camera.lens} mm and sensor {sensor} mm: both must be "
                "positive."
            )
        fx = camera.lens / sensor * viewfac
    else:
        if not camera.ortho_scale > 0:
            raise CameraError(f"camera '{camera.name}' has orthographic scale {camera.ortho_scale}: make it positive.")
        fx = viewfac / camera.ortho_scale
    fy = fx / ycor
    cx = width / 2 - camera.shift_x * viewfac
    cy = height / 2 + camera.shift_y * viewfac / ycor
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)
    return K, width, height


def world_to_camera(matrix_world, name: str = "camera") -> np.ndarray:
    """(4, 4) float64 OpenCV world-to-camera from a Blender camera's ``matrix_world`` (4×4, row-major nested
    sequence or array; Blender cameras look down their local −z with +y up).

    Scale is removed by normalising the columns. A mirrored camera (negative determinant: an odd number of
    negative scales on it or its parents) or a sheared one (a non-uniformly scaled, rotated parent) raises
    :class:`CameraError`: neither is a rigid camera.
    """
    matrix = np.asarray(matrix_world, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise CameraError(f"camera '{name}' has no valid 4x4 world matrix.")
    axes = matrix[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if np.any(lengths < 1e-12):
        raise CameraError(f"camera '{name}' has zero scale on an axis: give it (and its parents) a non-zero scale.")
    rotation = axes / lengths
    if np.linalg.det(rotation) < 0:
        raise CameraError(
            f"camera '{name}' is mirrored (a negative scale on it or a parent): its images would be flipped. "
            "Make the scale positive (e.g. Object > Apply > Scale on the parent, or rotate 180° instead)."
        )
    gram = rotation.T @ rotation
    shear = np.max(np.abs(gram - np.eye(3)))
    if shear > SHEAR_TOLERANCE:
        raise CameraError(
            f"camera '{name}' is sheared (its parent is scaled unevenly and the camera rotated inside it; axis "
            f"cosine {shear:.1e}): give the parent a uniform scale or apply its scale."
        )
    r_w2c = np.diag([1.0, -1.0, -1.0]) @ rotation.T
    result = np.eye(4)
    result[:3, :3] = r_w2c
    result[:3, 3] = -r_w2c @ matrix[:3, 3]
    return result


def fit_to_image(K, width: int, height: int, image_width: int, image_height: int, name: str = "camera") -> np.ndarray:
    """K for an image of ``image_width`` × ``image_height`` made from a render of ``width`` × ``height``.

    The image is accepted when its aspect matches the render's: each side within :data:`ASPECT_TOLERANCE_PX` of
    the other side scaled by the render's aspect (what resizing and rounding to whole pixels gives). K's first
    row is scaled by image_width / width and its second by image_height / height (pixel-corner convention, so
    the principal point scales too). Otherwise :class:`CameraError`.
    """
    K = np.array(K, dtype=np.float64)
    if (image_width, image_height) == (width, height):
        return K
    expected_height = image_width * height / width
    expected_width = image_height * width / height
    if (
        abs(image_height - expected_height) > ASPECT_TOLERANCE_PX
        or abs(image_width - expected_width) > ASPECT_TOLERANCE_PX
    ):
        raise CameraError(
            f"camera '{name}': the image is {image_width}x{image_height} px but the render size is {width}x{height} "
            f"px, a different aspect (an image {image_width} px wide would be {expected_height:.0f} px high). Set "
            "the scene's resolution to the image's size (Output Properties > Format), or use an image with the "
            "render's aspect."
        )
    K[0] *= image_width / width
    K[1] *= image_height / height
    return K


def job_view(
    camera: CameraData,
    render: RenderSettings,
    matrix_world,
    image: str,
    mask: str | None = None,
    name: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> dict:
    """One JSON-ready view entry of ``job.json`` (see ``backend/inputs/job_file.py``).

    ``image`` and ``mask`` are written as given (the job writer decides absolute or relative paths; an empty or
    None mask is left out). ``image_size`` = (width, height) of the image file: K is fitted to it with
    :func:`fit_to_image`; None means the image has the render's size. ``name`` defaults to the camera's name.
    """
    camera_type = job_camera_type(camera)
    K, width, height = intrinsics(camera, render)
    if image_size is not None:
        image_width, image_height = (int(v) for v in image_size)
        K = fit_to_image(K, width, height, image_width, image_height, camera.name)
        width, height = image_width, image_height
    w2c = world_to_camera(matrix_world, camera.name)
    entry = {
        "image": str(image),
        "name": name if name is not None else camera.name,
        "camera_type": camera_type,
        "world_to_camera": _plain(w2c),
        "K": _plain(K),
        "width": width,
        "height": height,
    }
    if mask:
        entry["mask"] = str(mask)
    return entry


def _plain(matrix: np.ndarray) -> list[list[float]]:
    values = [[float(v) for v in row] for row in matrix]
    if not all(math.isfinite(v) for row in values for v in row):
        raise CameraError("a camera matrix holds a non-finite number (check the camera's settings).")
    return values
