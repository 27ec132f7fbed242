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

_PALETTE_SRGB = ((0.90, 0.15, 0.12), (0.98, 0.72, 0.08), (0.05, 0.62, 0.55), (0.16, 0.30, 0.85))
_LIGHT_KEY = (0.45, -0.55, 0.70)
_LIGHT_FILL = (-0.60, 0.50, -0.25)
_AMBIENT, _KEY, _FILL = 0.32, 0.78, 0.22


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
    """sRGB colour of the views where the object is absent (alpha 0)."""


@dataclass
class SyntheticScene:
    train: list[View]
    test: list[View]
    gt_vertices: np.ndarray
    """(N, 3) float32 ground-truth surface vertices, world coordinates."""
    gt_faces: np.ndarray
    """(M, 3) int64 triangles."""
    background: tuple[float, float, float]


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


def render_view(camera: Camera, background=(1.0, 1.0, 1.0), supersample: int = 2) -> tuple[np.ndarray, ...]:
    """Render the object: ``(rgb (H, W, 3), alpha (H, W), depth (H, W))`` float32.

    ``rgb`` is the un-premultiplied sRGB object colour (``background`` where alpha is 0); ``alpha`` the coverage
    of ``supersample``² sub-pixel rays; ``depth`` the camera-z depth where all sub-pixels hit a locally smooth
    surface, 0 elsewhere (silhouettes, occlusion edges, background)."""
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
    forward = torch.from_numpy(camera.forward).float()
    z = (t_all * (d @ forward)).reshape(H, s, W, s).permute(0, 2, 1, 3).reshape(H, W, s * s)
    hit_b = hit.reshape(H, s, W, s).permute(0, 2, 1, 3).reshape(H, W, s * s)
    col_b = colour_lin.reshape(H, s, W, s, 3).permute(0, 2, 1, 3, 4).reshape(H, W, s * s, 3)
    alpha = hit_b.float().mean(-1)
    premult = col_b.mean(-2)
    bg = torch.tensor(background, dtype=torch.float32)
    rgb = torch.where(alpha[..., None] > 0, linear_to_srgb(premult / alpha.clamp_min(1e-6)[..., None]), bg)
    full = hit_b.all(-1)
    spread = z.amax(-1) - z.amin(-1)
    depth = torch.where(full & (spread < 0.01 * z.mean(-1).clamp_min(1e-6)), z.mean(-1), torch.zeros(()))
    return rgb.numpy().astype(np.float32), alpha.numpy().astype(np.float32), depth.numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------------ scene


def _train_elevation(i: int) -> float:
    """Four interleaved rings at −25°, 35°, 5° and 60°, so the underside is seen too."""
    return (-25.0, 35.0, 5.0, 60.0)[i % 4]


def _cameras(config: SceneConfig) -> tuple[list[Camera], list[Camera]]:
    rng = np.random.default_rng(config.seed)
    jitter = 0.0 if config.seed == 0 else float(rng.uniform(0, 360.0 / max(config.train_views, 1)))
    common = dict(radius=config.radius, fov_degrees=config.fov_degrees, size=config.size)
    train = orbit_cameras(
        config.train_views,
        elevations_degrees=[_train_elevation(i) for i in range(max(config.train_views, 1))],
        azimuth_offset_degrees=jitter,
        **common,
    )
    # held-out views: half-way between the training azimuths, at intermediate elevations
    test_offset = jitter + 180.0 / max(config.train_views, 1)
    test = orbit_cameras(
        config.test_views, elevations_degrees=(30.0, 22.0, 35.0, 5.0), azimuth_offset_degrees=test_offset, **common
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
            rgb, alpha, depth = render_view(cam, config.background)
            out.append(View(f"{prefix}_{k:03d}", cam, rgb, alpha, depth))
        return out

    vertices, faces = ground_truth_mesh(config.grid)
    return SyntheticScene(
        views("train", train_cams),
        views("test", test_cams),
        vertices,
        faces,
        tuple(float(c) for c in config.background),
    )


# --------------------------------------------------------------------------------------------------------- io


def _write_split(folder: Path, split: str, views: list[View]) -> None:
    (folder / split).mkdir(parents=True, exist_ok=True)
    frames = []
    angle_x = None
    for k, view in enumerate(views):
        cam = view.camera
        angle_x = 2.0 * math.atan(0.5 * cam.width / cam.K[0, 0])
        alpha = view.mask if view.mask is not None else np.ones(view.rgb.shape[:2], np.float32)
        rgba = np.concatenate([view.rgb, alpha[..., None]], -1)
        Image.fromarray(np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8), "RGBA").save(
            folder / split / f"r_{k}.png"
        )
        frames.append(
            {
                "file_path": f"./{split}/r_{k}",
                "rotation": 0.0,
                "transform_matrix": w2c_to_opengl_c2w(cam.world_to_camera).tolist(),
            }
        )
    doc = {"camera_angle_x": angle_x, "frames": frames}
    (folder / f"transforms_{split}.json").write_text(json.dumps(doc, indent=2))


def write_scene_as_transforms(scene: SyntheticScene, folder: Path) -> Path:
    """Write the scene in the nerf_synthetic layout: ``train/r_{k}.png`` and ``test/r_{k}.png`` (straight-alpha
    RGBA, alpha = coverage), ``transforms_train.json`` / ``transforms_test.json`` (``camera_angle_x`` and
    OpenGL camera-to-world ``transform_matrix`` per frame; ``file_path`` without extension, as in the original
    dataset) and ``gt.ply`` (binary ground-truth mesh, world units). Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_split(folder, "train", scene.train)
    _write_split(folder, "test", scene.test)
    faces = torch.as_tensor(np.asarray(scene.gt_faces, dtype=np.int64))
    gt = Mesh(torch.as_tensor(scene.gt_vertices, dtype=torch.float32), faces)
    export_mesh(gt, folder, ExportConfig(formats=("ply",), stem="gt"))
    return folder
