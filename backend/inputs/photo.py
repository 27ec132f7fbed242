"""A photo as loaded plus its camera as the pose tool saw it → a :class:`View`: scale, undistort, turn upright.

Every importer ends each view with :func:`make_view`. The rule for cameras and EXIF orientation:

- A camera describes the photo's **stored** pixels, ignoring its EXIF orientation tag. That is what COLMAP does
  (it reads the stored pixels on purpose, so that one camera's intrinsics fit all its photos: colmap/colmap
  #1406, #2104), so it holds for everything whose poses come from COLMAP (LLFF's ``poses_bounds.npy``,
  ``transforms.json`` files converted from COLMAP models); renderers write no tag at all.
- The one exception it can tell apart: a photo tagged as turned by 90° (tags 5–8), not square, whose camera's
  width × height is the *upright* size (or, where the format allows a scaled copy, its aspect ratio). That
  camera was made for the upright photo, and is used for it as it is.
- The view shows the photo upright. For a camera of the stored pixels and a rotation tag (3, 6, 8) the camera
  is turned with the pixels (:func:`backend.inputs.orientation.upright_camera`: the same rays see the same
  colours). Mirroring tags (2, 4, 5, 7) cannot be followed by a camera, so those photos stay as stored (with a
  note in ``Job.warnings``).
- A transposing tag with a camera that fits neither the stored nor the upright size raises :class:`InputError`.

Order: the camera is scaled to the photo's size when the format allows it (``rescale``: COLMAP and LLFF accept
a downscaled copy of the photos the poses were made from, same aspect ratio to within a pixel); lens distortion
is removed (:mod:`backend.inputs.undistort`) in the grid the distortion was calibrated in; then the view is
turned upright. Mask and depth files follow the image (they share its stored grid).
"""

from __future__ import annotations

from dataclasses import replace

from ..cameras import Camera
from ..errors import InputError
from ..views import View
from .images import Pixels
from .orientation import MIRRORS, TRANSPOSED, upright_array, upright_camera, upright_size
from .undistort import Distortion, undistort_pixels


def fits(camera: Camera, size: tuple[int, int], rescale: bool) -> bool:
    """Whether ``camera`` was made for an image of ``size`` (width, height): the same size, or with ``rescale`` a
    scaled copy (the camera's height scaled like its width lands within a pixel of the image's)."""
    width, height = size
    if (camera.width, camera.height) == (width, height):
        return True
    return rescale and abs(camera.height * width / camera.width - height) <= 1.0


def upright_pixels(pixels: Pixels) -> Pixels:
    """``pixels`` turned upright per their EXIF orientation (orientation 1 afterwards)."""
    o = pixels.orientation
    return Pixels(upright_array(pixels.rgb, o), upright_array(pixels.mask, o), upright_array(pixels.depth, o), 1)


def make_view(
    name: str,
    pixels: Pixels,
    camera: Camera,
    *,
    distortion: Distortion | None = None,
    rescale: bool = False,
    index: int | None = None,
    notes: list[str] | None = None,
) -> View:
    """The view of a photo (see the module docstring for the rule).

    ``camera``: as the pose tool gave it, for a photo of ``camera.width`` × ``camera.height``. ``distortion``: the
    lens model of that camera, or None. ``rescale``: accept a scaled copy of that photo (K is scaled to it).
    ``notes`` collects what the caller should put in ``Job.warnings``. Sizes that still disagree are left to
    :func:`backend.inputs.validate.validate_job`, except where ``rescale`` or a transposing EXIF tag is involved:
    those raise :class:`InputError` here, naming both sizes.
    """
    notes = notes if notes is not None else []
    stored = (pixels.width, pixels.height)
    orientation = pixels.orientation
    if orientation in TRANSPOSED and stored[0] != stored[1]:
        upright = upright_size(*stored, orientation)
        if fits(camera, upright, rescale) and not fits(camera, stored, rescale):
            pixels = upright_pixels(pixels)  # the camera was made for the upright photo
        elif not fits(camera, stored, rescale):
            raise InputError(
                f"the photo is {stored[0]}x{stored[1]} as stored ({upright[0]}x{upright[1]} upright, EXIF "
                f"orientation {orientation}) but its camera is {camera.width}x{camera.height}",
                view=name,
                index=index,
                fix="use the photo the camera was made for, or correct the camera's width/height and intrinsics.",
            )
    size = (pixels.width, pixels.height)
    if (camera.width, camera.height) != size and rescale:
        if not fits(camera, size, rescale):
            raise InputError(
                f"the photo is {size[0]}x{size[1]}, not a scaled copy of the {camera.width}x{camera.height} "
                "image its camera was made for (the aspect ratios differ)",
                view=name,
                index=index,
                fix="use the photos the poses were computed from, or copies resized by one factor.",
            )
        camera = camera.scaled(*size)
    if distortion is not None and not distortion.is_identity and (camera.width, camera.height) == size:
        result = undistort_pixels(pixels, camera.K, distortion)
        pixels, camera = result.pixels, replace(camera, K=result.K)
        if result.outside:
            share = 100.0 * result.outside / (size[0] * size[1])
            where = "mask 0 there" if pixels.mask is not None else "no mask marks them"
            notes.append(
                f"view '{name}': {result.outside} pixels ({share:.2g}%) of the undistorted photo lie outside the "
                f"original or past the lens model's valid range ({where})."
            )
    if pixels.orientation in MIRRORS:
        notes.append(
            f"view '{name}': EXIF orientation {pixels.orientation} mirrors the photo; it is used as stored, "
            "since no camera sees a mirror image."
        )
    elif pixels.orientation != 1 and (camera.width, camera.height) == (pixels.width, pixels.height):
        camera = upright_camera(camera, pixels.orientation)
        pixels = upright_pixels(pixels)
    return View(name, camera, pixels.rgb, pixels.mask, pixels.depth)
