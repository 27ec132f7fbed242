"""A procedurally built, textured test object, rendered by sphere tracing (no external data).

The object is an analytic signed-distance shape in a Z-up world, inside about [-0.9, 0.9]³: a rounded-box body
with a spherical dimple pressed into its +y side, a sphere "head" smoothly blended onto its top (a concave
neck) and a torus "handle" on its -x side (a through-hole). Its colour is a view-independent albedo (wavy
horizontal bands in four saturated colours, a soft 3D checker, a smooth gradient) times fixed Lambertian
lighting from fixed world-space lights plus ambient, so every surface point has one colour from every view,
as with baked-lighting renders.

Views are rendered at 2× resolution and box-downsampled, so alpha is pixel coverage (fractional at
silhouettes) and ``rgb`` is the un-premultiplied object colour (the background colour where alpha is 0).
The ground-truth mesh is a marching-cubes surface of the SDF on a fine grid.

With ``SceneConfig.backdrop`` the object stands in a room instead, as in a photograph without masks: a wooden
table disc just below it and the inside of a large textured sphere around everything (both found by analytic
ray intersection, no tracing; see :func:`backdrop_colour`). ``rgb`` is then the whole photo, the object
composited over the backdrop sub-sample by sub-sample, while ``alpha`` and ``depth`` still describe the object
alone (for scoring).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cameras import Camera, orbit_cameras, ray_bundle, w2c_to_opengl_c2w
from .colour import linear_to_srgb, srgb_to_linear
from .export import ExportConfig, export_mesh
from .marching_cubes import marching_cubes
from .mesh import Mesh
from .views import View

BOX = 1.0
"""Rays are traced inside the box [-BOX, BOX]³; the object lies well inside it."""

OBJECT_BOTTOM_Z = -0.68
"""The object's lowest point: the flat underside of the body (centre z -0.3, half height 0.38); the handle
reaches down to -0.66. Checked on the SDF (a scan upwards in z steps of 0.0001 first finds the inside at
-0.68) and on the ground-truth mesh (lowest vertex -0.680)."""
TABLE_Z = OBJECT_BOTTOM_Z - 0.06
"""Height of the backdrop's table top, a horizontal disc just below the object (it floats 0.06 above it)."""
TABLE_RADIUS = 2.5
"""Radius of the table disc around the z axis."""
ROOM_RADIUS = 8.0
"""Radius of the backdrop's room: the inside of a sphere around the origin; cameras must be inside it."""

_PALETTE_SRGB = ((0.90, 0.15, 0.12), (0.98, 0.72, 0.08), (0.05, 0.62, 0.55), (0.16, 0.30, 0.85))
_LIGHT_KEY = (0.45, -0.55, 0.70)
_LIGHT_FILL = (-0.60, 0.50, -0.25)
_AMBIENT, _KEY, _FILL = 0.32, 0.78, 0.22
# Backdrop colours (sRGB), muted so that they stay apart from the object's saturated palette.
_TABLE_SRGB = ((0.66, 0.54, 0.41), (0.46, 0.35, 0.26))  # light and dark wood grain
_FLOOR_SRGB = (0.36, 0.35, 0.33)
_WALL_SRGB = (0.74, 0.72, 0.67)
_ROOM_BLOBS = (  # (direction from the origin, sRGB colour) of large soft patches on the room's walls
    ((1.0, 0.3, 0.2), (0.56, 0.63, 0.47)),  # sage
    ((-0.4, 1.0, 0.1), (0.72, 0.52, 0.54)),  # dusty rose
    ((-1.0, -0.5, 0.4), (0.46, 0.53, 0.64)),  # slate
    ((0.3, -1.0, -0.1), (0.80, 0.71, 0.52)),  # sand
    ((0.6, 0.7, 0.6), (0.63, 0.47, 0.41)),  # terracotta
    ((-0.7, 0.2, -0.5), (0.50, 0.48, 0.42)),  # olive grey
)
_TRAIN_ELEVATIONS = (-25.0, 35.0, 5.0, 60.0)
_TEST_ELEVATIONS = (30.0, 22.0, 35.0, 5.0)
_BACKDROP_TRAIN_ELEVATIONS = (15.0, 35.0, 55.0, 25.0)
_BACKDROP_TEST_ELEVATIONS = (30.0, 20.0, 45.0, 40.0)


@dataclass(frozen=True)
class SceneConfig:
    size: int = 128
    """Image width = height in pixels."""
    train_views: int = 16
    """Views on the training ring (the inputs)."""
    test_views: int = 4
    """Held-out views, between the training azimuths."""
    radius: float = 4.0
    """Camera distance from the origin (the object fits in about [-1, 1]³)."""
    fov_degrees: float = 30.0
    """Full field of view of the square views."""
    seed: int = 0
    """Seeds the small random jitter of the camera azimuths (0 = the canonical, evenly spaced rings)."""
    grid: int = 160
    """Marching-cubes lattice points per axis for the ground-truth mesh."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """sRGB colour of the views where the object is absent (alpha 0); unused with ``backdrop``."""
    backdrop: bool = False
    """Photograph the object in a room instead of on ``background``: a textured table disc at ``TABLE_Z`` and
    textured walls (a sphere of ``ROOM_RADIUS``) fill every pixel the object leaves uncovered. Cameras then all
    look down from above the table (default rings at 15°, 35°, 55°, 25°; held-out views at 30°, 20°, 45°,
    40°). ``alpha`` and ``depth`` remain the object's alone."""
    train_elevations: tuple[float, ...] | None = None
    """Elevations in degrees the training cameras cycle through; None: the default rings (−25°, 35°, 5°, 60°
    without a backdrop, see ``backdrop`` for those with one)."""
    test_elevations: tuple[float, ...] | None = None
    """Elevations in degrees the held-out cameras cycle through; None: the defaults (30°, 22°, 35°, 5° without
    a backdrop)."""


@dataclass
class SyntheticScene:
    train: list[View]
    test: list[View]
    gt_vertices: np.ndarray
    """(N, 3) float32 ground-truth surface vertices, world coordinates."""
    gt_faces: np.ndarray
    """(M, 3) int64 triangles."""
    background: tuple[float, float, float] | None
    """The flat sRGB colour where alpha is 0, or None for a scene with a backdrop (a photo with no such
    colour: ``rgb`` shows the table and room there)."""


# ------------------------------------------------------------------------------------------------------ shape


def _smin(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Polynomial smooth minimum (smooth union) with blend radius ``k``."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def scene_sdf(points: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) of the object at ``points`` (..., 3) → (...). A distance bound,
    exact away from the smooth blends."""
    x, y, z = points.unbind(-1)
    # body: rounded box, centre (0.1, 0, -0.3), half extents (0.52, 0.44, 0.38) including rounding 0.1
    qx = (x - 0.1).abs() - 0.42
    qy = y.abs() - 0.34
    qz = (z + 0.3).abs() - 0.28
    outside = torch.stack([qx.clamp_min(0), qy.clamp_min(0), qz.clamp_min(0)], -1).norm(dim=-1)
    inside = torch.maximum(qx, torch.maximum(qy, qz)).clamp_max(0)
    body = outside + inside - 0.1
    # dimple: a sphere carved out of the +y face
    dimple = ((x - 0.3) ** 2 + (y - 0.62) ** 2 + (z + 0.36) ** 2).sqrt() - 0.3
    body = -_smin(-body, dimple, 0.04)
    # head: sphere resting on the body, blended to form a concave neck
    head = ((x - 0.15) ** 2 + y**2 + (z - 0.34) ** 2).sqrt() - 0.34
    shape = _smin(body, head, 0.14)
    # handle: torus in the xz plane (hole along y) on the -x side
    ring = (((x + 0.5) ** 2 + (z + 0.28) ** 2).sqrt() - 0.3) ** 2 + y**2
    handle = ring.sqrt() - 0.08
    return _smin(shape, handle, 0.05)


def scene_normals(points: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Unit outward normals (..., 3) from central differences of :func:`scene_sdf`."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    grads = [scene_sdf(points + o) - scene_sdf(points - o) for o in offsets]
    g = torch.stack(grads, -1)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------------- colour


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def albedo(points: torch.Tensor) -> torch.Tensor:
    """Linear-RGB albedo (..., 3) at world ``points``: wavy bands + soft checker + gradient."""
    x, y, z = points.unbind(-1)
    palette = srgb_to_linear(torch.tensor(_PALETTE_SRGB, dtype=points.dtype, device=points.device))
    # low frequency: wavy horizontal bands, 4 colours, soft edges
    phase = 3.2 * (z + 0.9) + 0.35 * torch.sin(3.0 * x + 2.0 * y)
    band = torch.floor(phase)
    frac = phase - band
    i0 = band.long().remainder(4)
    i1 = (i0 + 1).remainder(4)
    w = _smoothstep(0.85, 1.0, frac)[..., None]
    base = palette[i0] * (1 - w) + palette[i1] * w
    # mid frequency: soft 3D checker
    k = math.pi * 5.5
    chk = torch.tanh(6.0 * torch.sin(k * x) * torch.sin(k * y + 0.7) * torch.sin(k * z + 1.3))
    base = base * (0.78 + 0.22 * chk)[..., None]
    # smooth gradient: warmer towards +x, slightly bluer towards -x
    g = (0.5 + 0.5 * x).clamp(0.0, 1.0)[..., None]
    tint = torch.stack([0.8 + 0.35 * g[..., 0], torch.full_like(x, 0.95), 1.15 - 0.35 * g[..., 0]], -1)
    return (base * tint).clamp(0.0, 1.0)


def shade(points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """View-independent sRGB colour (..., 3) in [0, 1] of surface ``points`` with unit ``normals``."""
    key = torch.tensor(_LIGHT_KEY, dtype=points.dtype, device=points.device)
    fill = torch.tensor(_LIGHT_FILL, dtype=points.dtype, device=points.device)
    key, fill = key / key.norm(), fill / fill.norm()
    light = _AMBIENT + _KEY * (normals @ key).clamp_min(0) + _FILL * (normals @ fill).clamp_min(0)
    return linear_to_srgb(albedo(points) * light[..., None])


def _srgb(colours, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(colours, dtype=like.dtype, device=like.device)


def table_colour(points: torch.Tensor) -> torch.Tensor:
    """sRGB colour (..., 3) of the table top at ``points`` (..., 3) (z ignored): two-tone wood grain, bands
    about 0.35 apart across y, bent by slow waves, under a gentle large-scale brightness change."""
    x, y = points[..., 0], points[..., 1]
    light, dark = _srgb(_TABLE_SRGB, points).unbind(0)
    phase = 2.9 * (y + 0.12 * torch.sin(1.7 * x + 0.3) + 0.05 * torch.sin(4.3 * x - 2.1 * y))
    grain = _smoothstep(-0.4, 0.4, torch.sin(2 * math.pi * phase))[..., None]
    tint = 0.92 + 0.08 * torch.sin(0.9 * x + 1.3 * y)[..., None]
    return ((light * (1 - grain) + dark * grain) * tint).clamp(0.0, 1.0)


def room_colour(points: torch.Tensor) -> torch.Tensor:
    """sRGB colour (..., 3) of the room's walls at ``points`` (..., 3) on them (used by direction from the
    origin and by position): a darker floor below the horizon, large soft patches of six colours on pale walls,
    and stripes a few units wide that modulate the brightness."""
    n = points / points.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    floor = _smoothstep(-0.25, 0.05, n[..., 2])[..., None]  # 0 on the floor, 1 on the walls
    colour = _srgb(_FLOOR_SRGB, points) * (1 - floor) + _srgb(_WALL_SRGB, points) * floor
    weight = torch.full_like(n[..., :1], 0.35)
    colour = colour * weight
    for direction, rgb in _ROOM_BLOBS:
        b = _srgb(direction, points)
        w = torch.exp(((n * (b / b.norm())).sum(-1, keepdim=True) - 1.0) / 0.08)
        colour = colour + w * _srgb(rgb, points)
        weight = weight + w
    colour = colour / weight
    x, y, z = points.unbind(-1)
    stripes = torch.sin(2.6 * x + 0.7 * z) * torch.sin(2.2 * y - 1.1 * z + 0.8) + 0.6 * torch.sin(1.7 * z + 0.4)
    return (colour * (0.84 + 0.2 * stripes)[..., None]).clamp(0.0, 1.0)


def backdrop_colour(origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """sRGB colour (N, 3) of what rays (N, 3) see of the backdrop alone (the object ignored): the table where a
    ray crosses the disc z = ``TABLE_Z``, |xy| ≤ ``TABLE_RADIUS`` from above (seen from below, the table is
    not there), else the room sphere of ``ROOM_RADIUS`` where the ray leaves it (origins must be inside)."""
    oz, dz = origins[:, 2], dirs[:, 2]
    t_table = (TABLE_Z - oz) / torch.where(dz < 0, dz, torch.full_like(dz, -1.0))
    p_table = origins + t_table[:, None] * dirs
    on_table = (oz > TABLE_Z) & (dz < 0) & (p_table[:, :2].norm(dim=-1) <= TABLE_RADIUS)
    a = (dirs * dirs).sum(-1)
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - ROOM_RADIUS**2
    t_room = (-b + (b * b - a * c).clamp_min(0.0).sqrt()) / a
    p_room = origins + t_room[:, None] * dirs
    return torch.where(on_table[:, None], table_colour(p_table), room_colour(p_room))


# ---------------------------------------------------------------------------------------------------- tracing


@contextlib.contextmanager
def _single_thread():
    """Run torch ops on one intra-op thread, restoring the setting afterwards.

    The tensors here are small (≤ 10⁵ elements per op, thousands of ops); on a busy 2-core machine torch's
    intra-op thread pool then spends its time waiting for the other core (measured: 3 s → 170 s for
    :func:`make_scene`), while one thread is never much slower than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _box_interval(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t_a, t_b = (-BOX - o) / safe, (BOX - o) / safe
    t_near = torch.minimum(t_a, t_b).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t_a, t_b).amin(-1)
    return t_near, t_far


def sphere_trace(
    origins: torch.Tensor, dirs: torch.Tensor, steps: int = 80, refine: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace rays (N, 3) against :func:`scene_sdf`: returns ``(hit (N,) bool, t (N,))`` with the hit point at
    ``origins + t · dirs``. A fixed number of (slightly relaxed) sphere-tracing steps, then a few bracketed
    secant/bisection refinements around the converged distance."""
    t_near, t_far = _box_interval(origins, dirs)
    t = t_near.clone()
    active = torch.arange(t.shape[0])
    dist = torch.ones_like(t)
    for step in range(steps):
        if step % 8 == 7:  # drop converged rays and rays that left the box
            keep = (t[active] < t_far[active]) & (dist.abs() > 1e-5)
            active = active[keep]
            if active.numel() == 0:
                break
        ta, fa = t[active], t_far[active]
        dist = scene_sdf(origins[active] + ta[:, None] * dirs[active])
        t[active] = torch.where(ta < fa, ta + 0.9 * dist, ta)
    dist = scene_sdf(origins + t[:, None] * dirs)
    hit = (dist.abs() < 2e-3) & (t < t_far) & (t >= t_near - 1e-3)
    # bracket [lo, hi] with sdf(lo) > 0 > sdf(hi); refine where valid
    lo, hi = t - 5e-3, t + 5e-3
    f_lo = scene_sdf(origins + lo[:, None] * dirs)
    f_hi = scene_sdf(origins + hi[:, None] * dirs)
    ok = hit & (f_lo > 0) & (f_hi < 0)
    for n in range(refine):
        secant = lo - f_lo * (hi - lo) / (f_hi - f_lo).clamp_max(-1e-12)
        mid = secant if n % 2 == 0 else 0.5 * (lo + hi)
        f_mid = scene_sdf(origins + mid[:, None] * dirs)
        outside = f_mid > 0
        lo, f_lo = torch.where(outside, mid, lo), torch.where(outside, f_mid, f_lo)
        hi, f_hi = torch.where(outside, hi, mid), torch.where(outside, f_hi, f_mid)
    final = lo - f_lo * (hi - lo) / (f_hi - f_lo).clamp_max(-1e-12)
    t = torch.where(ok, final, t)
    return hit, t


def render_view(
    camera: Camera, background=(1.0, 1.0, 1.0), supersample: int = 2, backdrop: bool = False
) -> tuple[np.ndarray, ...]:
    """Render the object: ``(rgb (H, W, 3), alpha (H, W), depth (H, W))`` float32.

    ``rgb`` is the un-premultiplied sRGB object colour (``background`` where alpha is 0); ``alpha`` the coverage
    of ``supersample``² sub-pixel rays; ``depth`` the camera-z depth where all sub-pixels hit a locally smooth
    surface, 0 elsewhere (silhouettes, occlusion edges, background).

    With ``backdrop`` every sub-pixel ray that misses the object takes :func:`backdrop_colour` instead, and
    ``rgb`` is the photo: the mean, in linear light, of the sub-pixel colours (``background`` is unused).
    ``alpha`` and ``depth`` are the same as without the backdrop."""
    H, W, s = camera.height, camera.width, supersample
    fine = camera.scaled(W * s, H * s)
    origins, dirs = ray_bundle(fine)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n = o.shape[0]
    t_near, t_far = _box_interval(o, d)
    candidates = torch.nonzero(t_far > t_near).squeeze(1)
    hit = torch.zeros(n, dtype=torch.bool)
    t_all = torch.zeros(n)
    colour_lin = torch.zeros(n, 3)
    with torch.no_grad(), _single_thread():
        if candidates.numel():
            h, t = sphere_trace(o[candidates], d[candidates])
            idx = candidates[h]
            hit[idx] = True
            t_all[idx] = t[h]
            p = o[idx] + t[h][:, None] * d[idx]
            colour = shade(p, scene_normals(p))
            colour_lin[idx] = srgb_to_linear(colour)
        if backdrop:
            missed = ~hit
            colour_lin[missed] = srgb_to_linear(backdrop_colour(o[missed], d[missed]))
    forward = torch.from_numpy(camera.forward).float()
    z = (t_all * (d @ forward)).reshape(H, s, W, s).permute(0, 2, 1, 3).reshape(H, W, s * s)
    hit_b = hit.reshape(H, s, W, s).permute(0, 2, 1, 3).reshape(H, W, s * s)
    col_b = colour_lin.reshape(H, s, W, s, 3).permute(0, 2, 1, 3, 4).reshape(H, W, s * s, 3)
    alpha = hit_b.float().mean(-1)
    premult = col_b.mean(-2)
    if backdrop:
        rgb = linear_to_srgb(premult)
    else:
        bg = torch.tensor(background, dtype=torch.float32)
        rgb = torch.where(alpha[..., None] > 0, linear_to_srgb(premult / alpha.clamp_min(1e-6)[..., None]), bg)
    full = hit_b.all(-1)
    spread = z.amax(-1) - z.amin(-1)
    depth = torch.where(full & (spread < 0.01 * z.mean(-1).clamp_min(1e-6)), z.mean(-1), torch.zeros(()))
    return rgb.numpy().astype(np.float32), alpha.numpy().astype(np.float32), depth.numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------------ scene


def _cameras(config: SceneConfig) -> tuple[list[Camera], list[Camera]]:
    """Training rings (without a backdrop four interleaved rings at −25°, 35°, 5°, 60°, so the underside is
    seen too; with one, all above the table) and held-out views half-way between the training azimuths."""
    if config.backdrop and config.radius >= ROOM_RADIUS:
        raise ValueError(
            f"cameras at radius {config.radius} would stand outside the backdrop's room (radius {ROOM_RADIUS}); "
            f"use a SceneConfig.radius below {ROOM_RADIUS}"
        )
    train_elevations = config.train_elevations or (_BACKDROP_TRAIN_ELEVATIONS if config.backdrop else _TRAIN_ELEVATIONS)
    test_elevations = config.test_elevations or (_BACKDROP_TEST_ELEVATIONS if config.backdrop else _TEST_ELEVATIONS)
    rng = np.random.default_rng(config.seed)
    jitter = 0.0 if config.seed == 0 else float(rng.uniform(0, 360.0 / max(config.train_views, 1)))
    common = dict(radius=config.radius, fov_degrees=config.fov_degrees, size=config.size)
    train = orbit_cameras(
        config.train_views, elevations_degrees=train_elevations, azimuth_offset_degrees=jitter, **common
    )
    test_offset = jitter + 180.0 / max(config.train_views, 1)
    test = orbit_cameras(
        config.test_views, elevations_degrees=test_elevations, azimuth_offset_degrees=test_offset, **common
    )
    return train, test


def ground_truth_mesh(grid: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface of :func:`scene_sdf` on a ``grid``³ lattice spanning [-BOX, BOX]³."""
    axis = torch.linspace(-BOX, BOX, grid)
    values = torch.empty(grid, grid, grid)
    yy, zz = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad(), _single_thread():
        for i in range(grid):  # slab by slab keeps memory small
            pts = torch.stack([torch.full_like(yy, float(axis[i])), yy, zz], -1)
            values[i] = -scene_sdf(pts)
        vertices, faces = marching_cubes(values, 0.0, (-BOX, -BOX, -BOX), (BOX, BOX, BOX))
    return vertices.detach().cpu().numpy().astype(np.float32), faces.detach().cpu().numpy().astype(np.int64)


def make_scene(config: SceneConfig = SceneConfig()) -> SyntheticScene:
    """Render the training and held-out views of the object and build its ground-truth mesh."""
    train_cams, test_cams = _cameras(config)

    def views(prefix: str, cams: list[Camera]) -> list[View]:
        out = []
        for k, cam in enumerate(cams):
            rgb, alpha, depth = render_view(cam, config.background, backdrop=config.backdrop)
            out.append(View(f"{prefix}_{k:03d}", cam, rgb, alpha, depth))
        return out

    vertices, faces = ground_truth_mesh(config.grid)
    return SyntheticScene(
        views("train", train_cams),
        views("test", test_cams),
        vertices,
        faces,
        None if config.backdrop else tuple(float(c) for c in config.background),
    )


# --------------------------------------------------------------------------------------------------------- io


def _to_8bit(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)


def _write_split(folder: Path, split: str, views: list[View], photos: bool) -> None:
    (folder / split).mkdir(parents=True, exist_ok=True)
    if photos:
        (folder / "masks" / split).mkdir(parents=True, exist_ok=True)
    frames = []
    angle_x = None
    for k, view in enumerate(views):
        cam = view.camera
        angle_x = 2.0 * math.atan(0.5 * cam.width / cam.K[0, 0])
        alpha = view.mask if view.mask is not None else np.ones(view.rgb.shape[:2], np.float32)
        frame = {"file_path": f"./{split}/r_{k}"}
        if photos:
            Image.fromarray(_to_8bit(view.rgb), "RGB").save(folder / split / f"r_{k}.png")
            Image.fromarray(_to_8bit(alpha), "L").save(folder / "masks" / split / f"r_{k}.png")
            frame["mask_path"] = f"./masks/{split}/r_{k}.png"
        else:
            rgba = np.concatenate([view.rgb, alpha[..., None]], -1)
            Image.fromarray(_to_8bit(rgba), "RGBA").save(folder / split / f"r_{k}.png")
        frame["rotation"] = 0.0
        frame["transform_matrix"] = w2c_to_opengl_c2w(cam.world_to_camera).tolist()
        frames.append(frame)
    doc = {"camera_angle_x": angle_x, "frames": frames}
    (folder / f"transforms_{split}.json").write_text(json.dumps(doc, indent=2))


def write_scene_as_transforms(scene: SyntheticScene, folder: Path) -> Path:
    """Write the scene in the nerf_synthetic layout: ``train/r_{k}.png`` and ``test/r_{k}.png`` (straight-alpha
    RGBA, alpha = coverage), ``transforms_train.json`` / ``transforms_test.json`` (``camera_angle_x`` and
    OpenGL camera-to-world ``transform_matrix`` per frame; ``file_path`` without extension, as in the original
    dataset) and ``gt.ply`` (binary ground-truth mesh, world units). Returns ``folder``.

    A scene with a backdrop (``scene.background`` None) is written as photos instead: ``r_{k}.png`` is RGB (an
    alpha channel would cut the backdrop away) and the coverage goes to a greyscale mask
    ``masks/{split}/r_{k}.png`` named by the frame's ``mask_path`` (the nerfstudio key). The loader's
    ``mask_source`` then chooses: "file" or "auto" (the default) read the masks, "none" gives maskless photos."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = scene.background is None
    _write_split(folder, "train", scene.train, photos)
    _write_split(folder, "test", scene.test, photos)
    faces = torch.as_tensor(np.asarray(scene.gt_faces, dtype=np.int64))
    gt = Mesh(torch.as_tensor(scene.gt_vertices, dtype=torch.float32), faces)
    export_mesh(gt, folder, ExportConfig(formats=("ply",), stem="gt"))
    return folder


def through_lens(image: np.ndarray, K: np.ndarray, coefficients: dict[str, float]) -> np.ndarray:
    """``image`` (H, W, ...) taken by the pinhole camera ``K`` as the same camera with an OpenCV radial-tangential
    lens (``coefficients``: ``k1 k2 k3 p1 p2``, missing = 0) would have taken it: each output pixel samples
    (bilinearly) where OpenCV's own ``undistortPoints``, independent of :mod:`backend.inputs.undistort`, sends it."""
    import cv2

    H, W = image.shape[:2]
    cols, rows = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)  # pixel centres, corner convention
    opencv_order = np.array([coefficients.get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3")])
    pinhole = cv2.undistortPoints(np.stack([cols, rows], -1).reshape(-1, 1, 2), K, opencv_order, P=K)
    source = pinhole.reshape(H, W, 2).astype(np.float32) - 0.5  # remap indexes pixel centres from 0
    return cv2.remap(image, source[..., 0], source[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
