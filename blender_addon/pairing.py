"""Auto-pairing of camera objects with image files, for "Add selected cameras".

Rules, tried in this order for each camera; the first that finds a file wins:

1. **Background image**: the camera's first enabled background image whose source is Image and whose image is
   a single file (``source == 'FILE'``) that exists. Blender-relative ``//`` paths are resolved.
2. **Name match** (needs a folder): an image file in the folder whose name without extension equals the camera
   object's name, ignoring case (``Camera.003`` → ``camera.003.PNG``). With several, the first extension of
   :data:`IMAGE_EXTENSIONS` wins.
3. **Image sequence** (needs a folder, and exactly one camera being paired, which is animated): files named
   ``<prefix><frame number>.<ext>`` (``render_0001.png``, ``0001.png``), one view per file whose frame lies in the
   scene's frame range, each with the camera posed at that frame. When the folder holds several sequences, the
   one whose prefix (without a trailing ``_``, ``-``, ``.`` or space) equals the camera's name is used.

Masks (optional, for any image found): ``<stem>_mask.<ext>`` beside the image, else ``masks/<stem>.<ext>`` in the
image's folder (any of :data:`IMAGE_EXTENSIONS`, case-insensitive). Files whose stem ends in ``_mask`` are never
taken for images.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .scene_cameras import CURRENT_FRAME

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".webp")
"""Image file extensions recognised (lower case), in order of preference."""
MASK_SUFFIX = "_mask"
MASK_FOLDER = "masks"
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


class PairingError(LookupError):
    """A folder's content is ambiguous for pairing; the message says what to rename."""


@dataclass(frozen=True)
class PairedView:
    """One view found for a camera: ``image`` and ``mask`` are absolute paths (``mask`` "" = none); ``frame`` is
    -1 for the camera at the scene's current frame, else the frame the image was taken at."""

    camera: object
    image: str
    mask: str
    frame: int
    source: str
    """How it was found: ``background image``, ``name match`` or ``image sequence``."""


@dataclass(frozen=True)
class Unpaired:
    """A camera (or other object) left without an image, and why."""

    camera: object
    reason: str

    @property
    def message(self) -> str:
        """``"<object name>: <reason>"``, for the UI."""
        return f"{self.camera.name}: {self.reason}"


@dataclass(frozen=True)
class Pairing:
    """What :func:`pair_views` found: views in the order of the cameras given, then the objects left unpaired."""

    views: list[PairedView] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)


def _images_in(folder: Path) -> list[Path]:
    """Image files (not masks) directly in ``folder``, sorted by name; [] when it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.stem.lower().endswith(MASK_SUFFIX) and path.is_file()
    )


def _preference(path: Path) -> int:
    return IMAGE_EXTENSIONS.index(path.suffix.lower())


def background_image(camera_object) -> str | None:
    """Absolute path of the camera's first enabled single-file background image, or None (the file may not
    exist: the caller checks)."""
    for background in camera_object.data.background_images:
        image = background.image
        if background.source != "IMAGE" or not background.show_background_image or image is None:
            continue
        if image.source == "FILE" and image.filepath:
            return os.path.normpath(bpy.path.abspath(image.filepath, library=image.library))
    return None


def image_by_name(folder, name: str) -> Path | None:
    """The image in ``folder`` named ``name`` (ignoring case and extension), or None."""
    matches = [path for path in _images_in(Path(folder)) if path.stem.lower() == name.lower()]
    return min(matches, key=_preference) if matches else None


def mask_for(image) -> Path | None:
    """The mask of ``image`` by the module's rule (``<stem>_mask.<ext>``, else ``masks/<stem>.<ext>``), or None."""
    image = Path(image)
    for folder, stem in ((image.parent, image.stem + MASK_SUFFIX), (image.parent / MASK_FOLDER, image.stem)):
        if folder.is_dir():
            matches = [
                path
                for path in folder.iterdir()
                if path.stem.lower() == stem.lower() and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
            ]
            if matches:
                return min(matches, key=_preference)
    return None


def image_sequence(folder, frame_start: int, frame_end: int, name: str | None = None) -> list[tuple[int, Path]]:
    """(frame, path) pairs, sorted by frame, of the numbered images in ``folder`` within [frame_start, frame_end].

    Files ``<prefix><digits>.<ext>`` with the same prefix and extension form a sequence. With several sequences,
    the one whose prefix (trailing ``_-.`` and spaces removed) equals ``name`` (ignoring case) is used; otherwise
    :class:`PairingError`. [] when the folder holds no numbered image.
    """
    sequences: dict[tuple[str, str], dict[int, Path]] = {}
    for path in _images_in(Path(folder)):
        match = _NUMBERED.match(path.stem)
        if match:
            frames = sequences.setdefault((match.group(1), path.suffix.lower()), {})
            frames.setdefault(int(match.group(2)), path)
    if not sequences:
        return []
    if len(sequences) > 1:
        named = [key for key in sequences if name and key[0].rstrip("_-. ").lower() == name.lower()]
        if len(named) != 1:
            found = ", ".join(f"{prefix}####{ext}" for prefix, ext in sorted(sequences))
            raise PairingError(
                f"several image sequences in {folder} ({found}): keep one, or name the camera's sequence "
                f"'{name}_####.png'."
            )
        frames = sequences[named[0]]
    else:
        frames = next(iter(sequences.values()))
    return sorted((frame, path) for frame, path in frames.items() if frame_start <= frame <= frame_end)


def is_animated(camera_object) -> bool:
    """Whether the object's pose can change over time: an action, drivers or constraints on it or a parent."""
    node = camera_object
    while node is not None:
        animation = node.animation_data
        if animation is not None and (animation.action is not None or len(animation.drivers) > 0):
            return True
        if len(node.constraints) > 0:
            return True
        node = node.parent
    return False


def _view(camera, image: Path | str, frame: int, source: str) -> PairedView:
    mask = mask_for(image)
    return PairedView(camera, str(image), str(mask) if mask else "", frame, source)


def pair_views(cameras: Iterable, scene, folder: str | None = None) -> Pairing:
    """Pair each camera object with its image(s) by the rules of the module docstring.

    ``folder`` (optional; ``//`` resolved) is where name matches and image sequences are looked for. Objects
    that are not cameras, and cameras without an image, come back in ``unpaired`` with the reason (what was
    looked for).
    """
    objects = list(cameras)
    camera_objects = [obj for obj in objects if obj.type == "CAMERA"]
    folder_path = Path(bpy.path.abspath(folder)) if folder else None
    result = Pairing()
    for obj in objects:
        if obj.type != "CAMERA":
            result.unpaired.append(Unpaired(obj, f"not a camera (a {obj.type.lower()})"))
            continue
        looked: list[str] = []
        background = background_image(obj)
        if background is not None and os.path.isfile(background):
            result.views.append(_view(obj, background, CURRENT_FRAME, "background image"))
            continue
        looked.append(f"background image {background} (file missing)" if background else "an enabled background image")
        if folder_path is None or not folder_path.is_dir():
            looked.append(f"images in {folder_path} (not a folder)" if folder_path else "an image folder (none given)")
            result.unpaired.append(Unpaired(obj, "no image found (looked for " + "; ".join(looked) + ")"))
            continue
        named = image_by_name(folder_path, obj.name)
        if named is not None:
            result.views.append(_view(obj, named, CURRENT_FRAME, "name match"))
            continue
        looked.append(f"{folder_path / obj.name}.{{{','.join(ext[1:] for ext in IMAGE_EXTENSIONS)}}}")
        sequence_note = _pair_sequence(obj, camera_objects, folder_path, scene, result)
        if sequence_note is None:
            continue
        looked.append(sequence_note)
        result.unpaired.append(Unpaired(obj, "no image found (looked for " + "; ".join(looked) + ")"))
    return result


def _pair_sequence(camera, camera_objects: list, folder: Path, scene, result: Pairing) -> str | None:
    """Add the camera's image-sequence views to ``result``; None when some were added, else what was looked for."""
    if len(camera_objects) != 1:
        return "an image sequence (only when a single animated camera is added)"
    if not is_animated(camera):
        return "an image sequence (the camera is not animated)"
    try:
        frames = image_sequence(folder, scene.frame_start, scene.frame_end, camera.name)
    except PairingError as exc:
        return f"an image sequence ({exc})"
    if not frames:
        return f"an image sequence in {folder} numbered by frame {scene.frame_start}-{scene.frame_end}"
    result.views.extend(_view(camera, path, frame, "image sequence") for frame, path in frames)
    return None
