"""Masks for photographs that have none: a colour segmentation per view, seeded by the bounds, made consistent
across views by carving, then refined once.

Each view is segmented with OpenCV's GrabCut (a colour model of object and background, refined by a graph cut, on
the colours of ``grabcut_colours``): pixels outside the projected bounds box are background for certain, pixels
inside it are probably object. One view alone often keeps pieces of background that happen to project inside the box
(the table behind the object, clutter), but such a piece sits at a different place behind the object in each view,
so carving a visual hull from all the segmentations removes it, while the object, which every view keeps, survives.
A second GrabCut pass per view, seeded by that hull's projection (a thin band around it may turn out either way),
sees the object against its own surroundings rather than the whole room; a second hull carved from those, inside the
first, is projected into every view and trimmed along its outline to that view's own segmentation (a hull of cells
is up to half a cell fatter than the outlines it was carved from): those are the derived masks, consistent but for
that band, and the rest of the pipeline runs as if the user had given them. Both carvings let a few views dissent,
since one view's GrabCut can lose a dark rim of the object against a dark background.

Measured on ``ethiopian_head`` (57 photos, bounds 1.3× the object's box; docs/BENCHMARKS.md), IoU against the true
masks of those views: a single view's first-pass segmentation 0.40–0.53 (the projected box covers most of the
photo); a hull carved from the first pass alone, no view dissenting, projected back: 0.940 (mean); both passes
0.965 with no dissent in the first carving, 0.975–0.976 with 4 % (over three seeds of GrabCut's start), 0.978
trimmed (precision 0.995 instead of 0.990, recall 0.9825 instead of 0.985), and 0.986 with GrabCut comparing
CIELAB colours, chroma doubled, instead of RGB (recall 0.991: it keeps the sculpture's dark top).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .cameras import Camera, project
from .errors import InputError
from .extract import gaussian_blur3d
from .hull import carve, lattice
from .marching_cubes import marching_cubes
from .mesh import Mesh
from .mesh_render import coverage
from .progress import Hooks
from .views import Bounds, View
from .volume import OccupancyGrid

GROW_PX = 1
"""Pixels each view's segmentation is grown by before it carves a hull or trims one (a cell whose centre falls a
pixel outside the object's outline in one view still counts as inside)."""


@dataclass(frozen=True)
class SegmentConfig:
    working_size: int = 256
    """Longest image side the first GrabCut pass runs at (it takes ~0.5 s per view at 256 px on one core)."""
    iterations: int = 5
    """GrabCut iterations per view."""
    close_px: int = 4
    """Radius (pixels at the working size) of the morphological closing of each view's foreground; enclosed holes
    are filled too. A highlight GrabCut calls background would otherwise carve a tunnel through the object."""
    hull_resolution: int = 160
    """Cells per side of the grids the segmentations carve (the bounds box, then the first hull's box)."""
    dissent: float = 0.04
    """Fraction of the views (rounded down) that may call a cell of the first hull background before it is carved
    (see ``refine_dissent``; on ``ethiopian_head``'s 57 views 2 % gave derived masks of IoU 0.965, 4 % 0.975:
    GrabCut drops a part of the object in a view or two, and which depends on its random start)."""
    refine_size: int = 320
    """Longest side of the crop around the object that the second GrabCut pass runs at."""
    refine_close_px: int = 2
    """``close_px`` of the second pass (pixels of its crop at ``refine_size``): the first hull already keeps a
    highlight from carving a tunnel, and a wider closing fills notches of background between two parts of the
    object (on ``ethiopian_head``, 4 px put 141 pixels per view more than 3 px outside the true masks, 2 px 87)."""
    refine_band: float = 0.016
    """Width, as a fraction of the image's longest side, of the band around the first hull's projection that the
    second pass may call object or background (beyond it: background)."""
    refine_dissent: float = 0.04
    """Fraction of the views (rounded down) that may call a cell of the second hull background before it is
    carved: one view's GrabCut sometimes drops a dark rim of the object against a dark background (on
    ``ethiopian_head``, 57 views, carving with no dissent lost the head's top in every view)."""
    keep_support: bool = False
    """Keep a support the bounds cut (a table, a stand) as part of the object instead of removing it."""
    support_cells: float = 2.0
    """Thickness (cells) of the top of a support the bounds cut (a table, a stand) that is removed with it."""
    trim_cells: float = 2.0
    """Width, in cells of the second hull (seen at its centre), of the band inside each derived mask's outline
    where the view's own second-pass segmentation decides (see ``trimmed``; on ``ethiopian_head``'s 1000 px photos
    a cell is 5 px)."""
    fills_bounds: float = 0.6
    """Warn that object and background were not separated when the carved hull fills more than this fraction of
    the bounds box (a hull that is the box itself means every view kept everything inside it)."""


@dataclass
class DerivedMasks:
    views: list[View]
    """The input views with their derived masks (float32, 0 or 1: the carved hull's projection, trimmed)."""
    fill: float
    """Fraction of the bounds box the carved hull occupies."""
    bounds: Bounds
    """The box of the carved hull (one cell of margin), inside the bounds it was carved in: the object's bounds
    for the rest of the pipeline (a hull carved from views that all look from above would reach down to the
    edge of any larger box)."""
    warnings: list[str]


def projected_box(view: View, bounds: Bounds, width: int, height: int) -> np.ndarray | None:
    """(height, width) uint8 mask of the bounds box's projection into ``view`` at that image size (1 inside),
    or None when part of the box lies behind the camera (its projection is then unbounded)."""
    import cv2

    cam = view.camera.scaled(width, height)
    uv, z = project(cam, bounds.corners())
    if not cam.orthographic and np.any(z <= 1e-6):
        return None
    region = np.zeros((height, width), np.uint8)
    polygon = cv2.convexHull(np.round(uv).clip(-(2**20), 2**20).astype(np.int32))
    cv2.fillConvexPoly(region, polygon, 1)
    return region


CHROMA_GAIN = 2.0
"""How much more GrabCut weighs a difference in hue and saturation than the same difference in lightness."""


def grabcut_colours(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 image in the colours GrabCut compares: CIELAB (lightness and two colour-opponent axes) with the
    opponent axes scaled by ``CHROMA_GAIN`` about neutral, as uint8. Measured on ``ethiopian_head``, where the
    sculpture's top is a dark brown patina against a dark green floor: the derived masks' IoU against the true masks
    0.978 from RGB, 0.981 from CIELAB, 0.986 with the chroma doubled or tripled (their share of the top fifth of
    the object lost: 1.15 %, 0.91 %, 0.38 %); each view's second pass started from its true mask grown 6 px: IoU
    0.987 → 0.991 (RGB → doubled chroma), better in 32 of the 57 views and worse in none; on the 16-view test scene
    0.910 → 0.903 (docs/BENCHMARKS.md)."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2Lab).astype(np.float32)
    lab[..., 1:] = 128.0 + CHROMA_GAIN * (lab[..., 1:] - 128.0)
    return np.clip(lab + 0.5, 0, 255).astype(np.uint8)


def run_grabcut(image: np.ndarray, labels: np.ndarray, config: SegmentConfig) -> np.ndarray | None:
    """(h, w) bool foreground of an RGB uint8 ``image`` from GrabCut started with OpenCV's ``labels`` (GC_BGD,
    GC_PR_FGD, ...), closed and with enclosed holes filled; None when GrabCut cannot run (e.g. too few pixels of
    one kind to fit a colour model). The k-means that starts GrabCut's colour models draws from the calling
    thread's random generator, which is reseeded first: a view's result depends neither on the views segmented
    before it nor on the thread. (On ``ethiopian_head``, with 2 % of the views dissenting in the first carving, the
    derived masks' IoU against the true masks was 0.978 with the generator left where the views before had put it,
    0.971 on two threads, 0.965–0.966 with each of four fixed seeds, 0.935–0.966 with one seed per view; with 4 %,
    0.975–0.976 with each of three fixed seeds.)"""
    import cv2

    labels = labels.astype(np.uint8)
    background_model, object_model = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(grabcut_colours(image), labels, None, background_model, object_model, config.iterations,
                    cv2.GC_INIT_WITH_MASK)  # fmt: skip
    except cv2.error:
        return None
    foreground = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if config.close_px > 0:
        foreground = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_CLOSE, disc(config.close_px)) > 0
    return ndimage.binary_fill_holes(foreground)


def disc(radius: int) -> np.ndarray:
    """OpenCV's elliptic structuring element ``2·radius + 1`` pixels wide (a 3×3 one is a cross)."""
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def rgb_bytes(rgb: np.ndarray) -> np.ndarray:
    """A float 0..1 image as uint8."""
    return np.clip(np.asarray(rgb, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def grabcut(view: View, bounds: Bounds, config: SegmentConfig) -> np.ndarray:
    """(H, W) bool foreground of one view at its own size: GrabCut at ``config.working_size``, started with the
    projected bounds box as "probably object" and the rest of the image as background. A view whose box covers
    the whole image (or reaches behind the camera) gives no information: all True, so it carves nothing."""
    import cv2

    H, W = view.rgb.shape[:2]
    scale = min(1.0, config.working_size / max(H, W))
    w, h = max(1, round(W * scale)), max(1, round(H * scale))
    region = projected_box(view, bounds, w, h)
    everything = np.ones((H, W), dtype=bool)
    if region is None or region.all() or not region.any():
        return everything
    image = rgb_bytes(view.rgb)
    if (w, h) != (W, H):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    foreground = run_grabcut(image, np.where(region > 0, cv2.GC_PR_FGD, cv2.GC_BGD), config)
    if foreground is None:
        return everything
    return cv2.resize(foreground.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0


def grabcut_around(view: View, first_mask: np.ndarray, config: SegmentConfig) -> np.ndarray:
    """(H, W) bool foreground of one view inside ``first_mask`` (its (H, W) bool mask from the first pass):
    GrabCut on a crop around it at ``config.refine_size``, with it as "probably object", a band
    ``config.refine_band`` wide around it as "probably background" and the rest as background. The colour models
    then come from the object's own surroundings, not the whole room. Returns ``first_mask`` where GrabCut cannot
    run."""
    import cv2

    H, W = first_mask.shape
    band = max(1, round(config.refine_band * max(H, W)))
    near = cv2.dilate(first_mask.astype(np.uint8), disc(band)) > 0
    rows, cols = np.nonzero(near)
    if len(rows) == 0:
        return first_mask
    margin = round(0.15 * max(np.ptp(rows), np.ptp(cols)))
    r0, r1 = max(0, rows.min() - margin), min(H, rows.max() + margin + 1)
    c0, c1 = max(0, cols.min() - margin), min(W, cols.max() + margin + 1)
    scale = min(1.0, config.refine_size / max(r1 - r0, c1 - c0))
    w, h = max(1, round((c1 - c0) * scale)), max(1, round((r1 - r0) * scale))

    def crop(mask: np.ndarray) -> np.ndarray:
        return cv2.resize(mask[r0:r1, c0:c1].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0

    labels = np.full((h, w), cv2.GC_BGD, np.uint8)
    labels[crop(near)] = cv2.GC_PR_BGD
    labels[crop(first_mask)] = cv2.GC_PR_FGD
    image = cv2.resize(rgb_bytes(view.rgb[r0:r1, c0:c1]), (w, h), interpolation=cv2.INTER_AREA)
    foreground = run_grabcut(image, labels, replace(config, close_px=config.refine_close_px))
    if foreground is None:
        return first_mask
    out = np.zeros((H, W), dtype=bool)
    out[r0:r1, c0:c1] = cv2.resize(foreground.astype(np.uint8), (c1 - c0, r1 - r0), interpolation=cv2.INTER_NEAREST)
    return out & first_mask


def support_plane(occupied: np.ndarray, cameras_grid: np.ndarray, rng: np.random.Generator,
                  thickness: float = 4.0) -> tuple[np.ndarray, float] | None:
    """The top plane (unit normal towards the cameras, offset; grid-index units) of the occupied cells on the grid's
    faces, when most of them lie in one slab at most ``thickness`` cells thick: a table or stand that the bounds
    cut. None otherwise. The slab is found around the plane through the most face cells (within half a cell; the
    faces' own planes excepted) and its orientation refitted by least squares."""
    res = occupied.shape[0]
    border = np.zeros_like(occupied)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    contact = np.argwhere(occupied & border).astype(np.float64)
    if len(contact) < 3 * res:  # a few cells: the object touches the bounds, nothing is cut
        return None
    best, best_count = None, 0
    for _ in range(200):
        a, b, c = contact[rng.choice(len(contact), 3, replace=False)]
        if np.any(((a == b) & (b == c)) & ((a == 0) | (a == res - 1))):
            continue  # all three on one face of the grid: that face's plane, not a support
        normal = np.cross(b - a, c - a)
        if np.linalg.norm(normal) < 1e-6:
            continue
        normal /= np.linalg.norm(normal)
        count = int((np.abs((contact - a) @ normal) < 0.5).sum())
        if count > best_count:
            best, best_count = (normal, float(normal @ a)), count
    if best is None:
        return None
    normal, offset = best
    in_slab = np.abs(contact @ normal - offset) <= thickness
    if in_slab.sum() < 0.7 * len(contact):
        return None
    slab = contact[in_slab]  # the slab's mid-plane by least squares (the sampled plane may lean across it)
    centre = slab.mean(0)
    normal = np.linalg.svd(slab - centre, full_matrices=False)[2][-1]
    if np.median(cameras_grid @ normal - normal @ centre) < 0:
        normal = -normal
    return normal, float((slab @ normal).max())  # the support's top


def isolate_object(occupied: np.ndarray, cameras_grid: np.ndarray, config: SegmentConfig) -> np.ndarray:
    """The occupied cells that belong to the object: without a support the bounds cut (everything on the far side
    of its plane from the cameras and its top ``config.support_cells`` thick) unless ``config.keep_support``,
    keeping the largest connected part."""
    keep = occupied.copy()
    plane = None if config.keep_support else support_plane(occupied, cameras_grid, np.random.default_rng(0))
    if plane is not None:
        normal, offset = plane
        index = np.indices(occupied.shape).reshape(3, -1).T.astype(np.float64)
        above = (index @ normal - offset > config.support_cells).reshape(occupied.shape)
        keep &= above
    return largest_part(keep)


def per_view(work: Callable[[int], np.ndarray], count: int, hooks: Hooks, message: str) -> list[np.ndarray]:
    """``[work(n) for n in range(count)]`` on as many threads as torch may use (the pipeline's pacer lowers that on
    a busy machine; OpenCV releases the GIL while it segments). Progress (``message`` formatted with ``n`` and
    ``count``) and cancel checks stay on the calling thread, one per view; a cancel waits only for the views being
    segmented."""
    pool = ThreadPoolExecutor(max(1, min(torch.get_num_threads(), count)), thread_name_prefix="segment")
    try:
        futures = [pool.submit(work, n) for n in range(count)]
        results = []
        for n, future in enumerate(futures):
            hooks.report("segment", n, count, message.format(n=n + 1, count=count))
            results.append(future.result())
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def largest_part(occupied: np.ndarray) -> np.ndarray:
    """The largest connected part of an occupancy grid."""
    labels, count = ndimage.label(occupied)
    if count <= 1:
        return occupied
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def hull_surface(occupied: torch.Tensor, bounds: Bounds) -> Mesh:
    """Mesh (world frame) of an occupancy grid whose cells split the bounds box, closed at the box's faces."""
    res = occupied.shape[0]
    values = gaussian_blur3d(F.pad(occupied.float(), (1, 1) * 3), 0.7)
    cell = bounds.size / res
    first = bounds.minimum - 0.5 * cell  # padded cell j has its centre at minimum + (j − ½) · cell
    last = first + (res + 1) * cell
    vertices, faces = marching_cubes(values, 0.5, first.tolist(), last.tolist())
    return Mesh(vertices.float(), faces)


def outline(surface: Mesh, view: View, size: int) -> np.ndarray:
    """(H, W) bool coverage of ``surface`` in ``view``, rasterised with the longest side at most ``size`` (it
    seeds a GrabCut that runs at about that size) and scaled up to the view's size."""
    import cv2

    H, W = view.rgb.shape[:2]
    scale = min(1.0, size / max(H, W))
    camera = view.camera.scaled(max(1, round(W * scale)), max(1, round(H * scale)))
    covered = (coverage(surface, camera, supersample=1).numpy() > 0.5).astype(np.uint8)
    return cv2.resize(covered, (W, H), interpolation=cv2.INTER_NEAREST) > 0


def cell_pixels(camera: Camera, bounds: Bounds, res: int) -> float:
    """Width in pixels of the longest side of a cell of ``bounds`` split into ``res``³ cells, seen by ``camera`` at
    the box's centre."""
    step = camera.world_to_camera[0, :3] * (bounds.size.max() / res)  # along the image's rows
    uv, _ = project(camera, np.stack([bounds.centre, bounds.centre + step]))
    return float(np.linalg.norm(uv[1] - uv[0]))


def trimmed(projected: np.ndarray, own: np.ndarray, band: int) -> np.ndarray:
    """A hull's (H, W) bool projection without the pixels of its outer ``band`` (pixels) that lie more than
    ``GROW_PX`` beyond the view's ``own`` segmentation: a hull is made of cells, and its outline lies up to about
    half a cell beyond the segmentations it was carved from. Deeper inside, the hull wins (a view that lost part of
    the object to its background, which the carving let dissent, keeps it)."""
    import cv2

    core = cv2.erode(projected.astype(np.uint8), disc(band), borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0
    grown = cv2.dilate(own.astype(np.uint8), disc(GROW_PX)) > 0
    return projected & (grown | core)


def derive_masks(views: list[View], bounds: Bounds, config: SegmentConfig, hooks: Hooks | None = None,
                 device="cpu") -> DerivedMasks:  # fmt: skip
    """Masks for ``views`` (world frame, any size): GrabCut seeded by ``bounds``, carved into a hull in the bounds
    box; GrabCut again around that hull's projection, carved into a second hull inside the first, projected back
    and trimmed to each view's own segmentation along its outline (see the module docstring). Reports each view
    of each pass as stage ``segment``."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise InputError(
            "deriving masks for photographs without masks needs OpenCV, which is not installed.",
            fix="run install.py again (it installs opencv-python-headless), or give masks.",
        ) from None
    hooks = hooks or Hooks()
    cameras = [v.camera for v in views]
    segments = per_view(lambda n: grabcut(views[n], bounds, config), len(views), hooks,
                        "segmenting view {n}/{count}")  # fmt: skip
    res = config.hull_resolution
    with torch.no_grad():
        keep = carve(cameras, segments, lattice(bounds.minimum, bounds.maximum, res, device), dilate_px=GROW_PX,
                     dissent=int(config.dissent * len(views)))  # fmt: skip
    cell = bounds.size / res
    cameras_grid = np.stack([(v.camera.centre - bounds.minimum) / cell - 0.5 for v in views])
    occupied = isolate_object(keep.view(res, res, res).cpu().numpy(), cameras_grid, config)
    fill = float(occupied.mean())
    if not occupied.any():
        raise InputError(
            "could not find the object: the views' segmentations share no region inside the bounds.",
            fix="check that the bounds enclose the object and that the cameras match the photos, or give masks.",
        )
    cells = np.argwhere(occupied)
    lo = bounds.minimum + np.maximum(cells.min(0) - 1, 0) * cell
    hi = bounds.minimum + np.minimum(cells.max(0) + 2, res) * cell
    box = Bounds((lo + hi) / 2, hi - lo)
    first = hull_surface(torch.as_tensor(occupied), bounds)
    outlines = []  # the second pass's starts: the first hull's projections (torch: on this thread)
    for view in views:
        hooks.check_cancel()
        outlines.append(outline(first, view, config.refine_size))
    refined = per_view(lambda n: grabcut_around(views[n], outlines[n], config),
                       len(views), hooks, "refining the object's outline in view {n}/{count}")  # fmt: skip
    with torch.no_grad():
        points = lattice(box.minimum, box.maximum, res, device)
        in_bounds = (points - torch.as_tensor(bounds.centre, dtype=points.dtype, device=device)) / torch.as_tensor(
            bounds.size / 2, dtype=points.dtype, device=device)  # fmt: skip
        inside_first = OccupancyGrid(torch.as_tensor(occupied, device=device)).lookup(in_bounds)
        keep = torch.zeros(len(points), dtype=torch.bool, device=device)
        keep[inside_first] = carve(cameras, refined, points[inside_first], dilate_px=GROW_PX,
                                   dissent=int(config.refine_dissent * len(views)))  # fmt: skip
    occupied = largest_part(keep.view(res, res, res).cpu().numpy())
    surface = hull_surface(torch.as_tensor(occupied), box) if occupied.any() else first
    derived = []
    for n, view in enumerate(views):
        hooks.report("segment", n, len(views), f"projecting the object into view {n + 1}/{len(views)}")
        projected = coverage(surface, view.camera, supersample=1).numpy() > 0.5
        band = round(config.trim_cells * cell_pixels(view.camera, box, res)) + 1
        derived.append(replace(view, mask=trimmed(projected, refined[n], band).astype(np.float32)))
    warnings = []
    if fill > config.fills_bounds:
        warnings.append(
            f"the object could not be separated from its background: the region the views agree on fills "
            f"{100 * fill:.0f} % of the bounds box. Give masks, tighter bounds, or photos where the background "
            "differs from the object."
        )
    hooks.report("segment", len(views), len(views), f"object fills {100 * fill:.0f} % of the bounds")
    return DerivedMasks(views=derived, fill=fill, bounds=box, warnings=warnings)
