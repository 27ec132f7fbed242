"""Triangle rasterisation: the one place in the backend that turns triangles into pixels.

Two implementations produce the same :class:`Fragments`:

* a pure-torch rasteriser (CPU and CUDA), vectorised over (triangle, candidate pixel) pairs, processed in
  chunks of bounded size;
* nvdiffrast (optional accelerator, CUDA only, imported lazily here and nowhere else), used by
  ``backend="auto"`` when ``import nvdiffrast.torch`` works and the inputs live on a CUDA device.

Triangle ids: the torch rasteriser keeps them as int64 (packed with the depth into one int64 z-buffer key, so ids
up to 2**32 − 1 are exact). nvdiffrast hands them back in a float32 channel, exact only up to 2**24, so meshes
with more triangles than :data:`NV_MAX_TRIANGLES` are rasterised in batches and merged by depth.

Conventions (see :mod:`backend.cameras`): pixel (i, j) = (column, row) has its centre at (i + 0.5, j + 0.5) and
coverage is decided at pixel centres only (no anti-aliasing). A pixel centre lying exactly on an edge is covered
(a tiny tolerance makes meshes watertight: a pixel on a shared edge is never missed by both triangles).
The nearest surface with positive camera depth wins; back faces are not culled.

Near plane: a triangle with any vertex whose camera z is below ``near`` (or with a non-finite projection) is
skipped entirely rather than clipped, by both backends. That is exact for objects wholly in front of the
camera, which is the use here; a triangle straddling the camera plane would otherwise need polygon clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import Camera
from .mesh import corners

CHUNK_CANDIDATES = 1 << 20
"""Upper bound on (triangle, candidate pixel) pairs evaluated at once by the torch rasteriser (memory ∝ this)."""

_EDGE_EPS = 1e-6
"""Tolerance in barycentric units for the inside test (keeps shared edges crack-free under rounding)."""

_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """What is visible at each pixel centre of an H × W image.

    ``triangle_id``: (H, W) int64 index into ``faces`` of the visible triangle, -1 where no triangle covers the
    pixel centre. ``barycentric``: (H, W, 3) float32 perspective-correct barycentric weights (w0, w1, w2) of that
    triangle's corners (``faces[t, 0..2]``), summing to 1; 0 where empty. ``depth``: (H, W) float32 camera z of
    the visible surface (0 where empty, and 0 everywhere for :func:`rasterize_2d`).
    """

    triangle_id: torch.Tensor
    barycentric: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(H, W) bool, True where a triangle covers the pixel centre."""
        return self.triangle_id >= 0

    @property
    def height(self) -> int:
        return int(self.triangle_id.shape[0])

    @property
    def width(self) -> int:
        return int(self.triangle_id.shape[1])


# ----------------------------------------------------------------------------------------------------------
# Public API


def rasterize(
    vertices: torch.Tensor, faces: torch.Tensor, camera: Camera, *, backend: str = "auto", near: float = 1e-3
) -> Fragments:
    """Rasterise a mesh seen by ``camera`` (pinhole or orthographic), sampling at pixel centres.

    ``vertices`` (N, 3) world coordinates (any float dtype; not differentiated through), ``faces`` (M, 3) int.
    ``backend``: ``"auto"`` (nvdiffrast on CUDA when importable, else torch), ``"torch"`` or ``"nvdiffrast"``.
    Triangles with a vertex closer than ``near`` (camera z) are skipped (see the module docstring). The result
    lives on ``vertices.device``.
    """
    vertices = vertices.detach()
    faces = faces.to(device=vertices.device, dtype=torch.int64)
    H, W = int(camera.height), int(camera.width)
    cam = _to_camera_frame(vertices, camera)
    z = cam[:, 2]
    xy = _camera_to_pixels(cam, camera)
    if faces.shape[0] == 0:
        return _empty(H, W, vertices.device)
    usable = (z >= near) & torch.isfinite(xy).all(dim=1)  # per vertex
    valid = corners(usable, faces).all(dim=1)
    if _choose_backend(backend, vertices.device) == "nvdiffrast":
        return _nvdiffrast_rasterize(cam, faces, valid, camera)
    return _torch_rasterize(xy, z, faces, valid, H, W, perspective=not camera.orthographic)


def rasterize_2d(
    points: torch.Tensor, triangles: torch.Tensor, height: int, width: int, *, backend: str = "auto"
) -> Fragments:
    """Rasterise 2-D triangles given directly in pixel units (used for UV-space baking).

    ``points`` (P, 2): x = column, y = row, corner convention (pixel (i, j) has centre (i + 0.5, j + 0.5)).
    ``triangles`` (M, 3) int. Barycentrics are plain (affine) barycentrics; ``depth`` is 0. Where triangles overlap,
    any one of them may win (the torch backend picks the lowest index).
    """
    points = points.detach()
    triangles = triangles.to(device=points.device, dtype=torch.int64)
    H, W = int(height), int(width)
    if triangles.shape[0] == 0:
        return _empty(H, W, points.device)
    xy = points.to(torch.float64)
    valid = torch.isfinite(xy[triangles]).all(dim=2).all(dim=1)
    if _choose_backend(backend, points.device) == "nvdiffrast":
        return _nvdiffrast_call(_clip_2d(xy, H, W), triangles, valid, H, W, vertex_z=None)
    return _torch_rasterize(xy, None, triangles, valid, H, W, perspective=False)


def interpolate(attributes: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Interpolate attributes at every pixel with the fragments' barycentrics.

    ``attributes``: (N, C) per vertex (indexed through ``faces`` (M, 3)) or (M, 3, C) per triangle corner.
    Returns (H, W, C) in the attributes' dtype, zeros where no triangle is visible. Differentiable with respect to
    ``attributes`` (not to the fragments).
    """
    tid = fragments.triangle_id
    H, W = tid.shape
    flat = tid.reshape(-1)
    mask = flat >= 0
    safe = flat.clamp_min(0)
    if attributes.dim() == 2:
        corners = faces.to(device=attributes.device, dtype=torch.int64)[safe.to(attributes.device)]  # (P, 3)
        values = attributes[corners]  # (P, 3, C)
    elif attributes.dim() == 3:
        values = attributes[safe.to(attributes.device)]  # (P, 3, C)
    else:
        raise ValueError(f"attributes must be (N, C) or (M, 3, C), got shape {tuple(attributes.shape)}")
    bary = fragments.barycentric.reshape(-1, 3).to(device=attributes.device, dtype=attributes.dtype)
    bary = bary * mask.to(attributes.device, attributes.dtype)[:, None]
    out = (values * bary[:, :, None]).sum(dim=1)
    return out.reshape(H, W, -1)


# ----------------------------------------------------------------------------------------------------------
# Projection helpers


def _to_camera_frame(vertices: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(N, 3) float64 OpenCV camera coordinates."""
    w2c = torch.as_tensor(camera.world_to_camera, dtype=torch.float64, device=vertices.device)
    v = vertices.to(torch.float64)
    return v @ w2c[:3, :3].T + w2c[:3, 3]


def _camera_to_pixels(cam: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(N, 2) float64 pixel coordinates (corner convention), matching :func:`backend.cameras.project`."""
    K = torch.as_tensor(camera.K, dtype=torch.float64, device=cam.device)
    if camera.orthographic:
        return cam[:, :2] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    z = cam[:, 2:3]
    safe = torch.where(z.abs() > 1e-30, z, torch.full_like(z, 1e-30))
    return (cam[:, :2] / safe) @ K[:2, :2].T + K[:2, 2]


def _empty(H: int, W: int, device) -> Fragments:
    return Fragments(
        triangle_id=torch.full((H, W), -1, dtype=torch.int64, device=device),
        barycentric=torch.zeros((H, W, 3), dtype=torch.float32, device=device),
        depth=torch.zeros((H, W), dtype=torch.float32, device=device),
    )


# ----------------------------------------------------------------------------------------------------------
# Backend selection


def nvdiffrast_available(device: torch.device | str | None = None) -> bool:
    """True when ``nvdiffrast.torch`` imports and (if given) ``device`` is a CUDA device."""
    if device is not None and torch.device(device).type != "cuda":
        return False
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # not installed, or its CUDA extension failed to build/load
        return False
    return True


def _choose_backend(backend: str, device: torch.device) -> str:
    if backend not in ("auto", "torch", "nvdiffrast"):
        raise ValueError(f"unknown rasteriser backend {backend!r}; use 'auto', 'torch' or 'nvdiffrast'")
    if backend == "torch":
        return "torch"
    available = nvdiffrast_available(device)
    if backend == "nvdiffrast" and not available:
        raise RuntimeError("the nvdiffrast backend needs CUDA tensors and an importable nvdiffrast.torch")
    return "nvdiffrast" if available else "torch"


# ----------------------------------------------------------------------------------------------------------
# Pure-torch rasteriser


def _torch_rasterize(
    xy: torch.Tensor,
    z: torch.Tensor | None,
    faces: torch.Tensor,
    valid: torch.Tensor,
    H: int,
    W: int,
    *,
    perspective: bool,
) -> Fragments:
    """Rasterise screen-space triangles. ``xy`` (N, 2) float64 pixels; ``z`` (N,) float64 camera depth or None."""
    device = xy.device
    M = faces.shape[0]
    if M >= 1 << 32:  # ids share an int64 z-buffer key with the depth bits (see _raster_block)
        raise ValueError(f"the torch rasteriser takes fewer than 2**32 triangles, got {M}")
    # Pixel-centre bounding boxes: columns i with i + 0.5 in [min x, max x]. Only the triangles whose box holds a
    # pixel centre are set up further (on a dense mesh most hold none: 58 % of a 322k-face object at 256²).
    p = corners(xy, faces)  # (M, 3, 2) float64
    lo = torch.minimum(torch.minimum(p[:, 0], p[:, 1]), p[:, 2])
    hi = torch.maximum(torch.maximum(p[:, 0], p[:, 1]), p[:, 2])
    big = float(max(H, W) + 2)
    i_min = torch.ceil(lo[:, 0].clamp(-big, big) - 0.5).clamp_min(0)
    i_max = torch.floor(hi[:, 0].clamp(-big, big) - 0.5).clamp_max(W - 1)
    j_min = torch.ceil(lo[:, 1].clamp(-big, big) - 0.5).clamp_min(0)
    j_max = torch.floor(hi[:, 1].clamp(-big, big) - 0.5).clamp_max(H - 1)
    box = torch.stack([i_min, i_max, j_min, j_max], dim=1)
    tri = torch.nonzero(valid & (i_min <= i_max) & (j_min <= j_max)).squeeze(1)
    p, box = p.index_select(0, tri), box.index_select(0, tri)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    solid = area.abs() > 1e-12  # twice the signed area
    if not bool(solid.all()):
        tri, p, box, area = tri[solid], p[solid], box[solid], area[solid]
    if tri.numel() == 0:
        return _empty(H, W, device)
    i_min, i_max, j_min, j_max = box.unbind(dim=1)
    x0, y0 = p[:, 0, 0], p[:, 0, 1]
    x1, y1 = p[:, 1, 0], p[:, 1, 1]
    x2, y2 = p[:, 2, 0], p[:, 2, 1]
    # From here on a triangle is known by its place in ``tri`` (its id in ``faces`` is looked up at the end).
    local = torch.arange(tri.numel(), device=device)

    # Screen-space barycentrics are affine in the pixel position: l_k(o + d) = l_k(o) + a_k dx + b_k dy, with o the
    # triangle's first candidate pixel centre (local offsets keep float32 evaluation accurate).
    inv_area = 1.0 / area
    ox = i_min + 0.5
    oy = j_min + 0.5
    a0 = (y1 - y2) * inv_area
    b0 = (x2 - x1) * inv_area
    a1 = (y2 - y0) * inv_area
    b1 = (x0 - x2) * inv_area
    l0_o = ((x1 - ox) * (y2 - oy) - (y1 - oy) * (x2 - ox)) * inv_area
    l1_o = ((x2 - ox) * (y0 - oy) - (y2 - oy) * (x0 - ox)) * inv_area
    coef = torch.stack([a0, b0, a1, b1, l0_o, l1_o], dim=1)  # (K, 6) float64

    if z is not None:
        zf = corners(z, faces.index_select(0, tri))
        zcoef = 1.0 / zf if perspective else zf  # 1/z is affine in screen space for pinholes, z for orthographic
    else:
        zcoef = torch.zeros((tri.numel(), 3), dtype=torch.float64, device=device)

    # Work items: triangles, with tall bounding boxes split into row bands so that no item exceeds the budget.
    bw = (i_max - i_min + 1).long()
    bh = (j_max - j_min + 1).long()
    rows_per_band = (CHUNK_CANDIDATES // bw).clamp_min(1)
    nbands = (bh + rows_per_band - 1) // rows_per_band
    if bool((nbands > 1).any()):
        item_tri = torch.repeat_interleave(local, nbands)
        first = torch.cumsum(nbands, 0) - nbands
        band = torch.arange(item_tri.numel(), device=device) - torch.repeat_interleave(first, nbands)
        rpb = torch.repeat_interleave(rows_per_band, nbands)
        row_off = band * rpb
        item_h = torch.minimum(rpb, torch.repeat_interleave(bh, nbands) - row_off)
        item_w = torch.repeat_interleave(bw, nbands)
    else:
        item_tri = local
        row_off = torch.zeros_like(local)
        item_h, item_w = bh, bw
    c = coef.index_select(0, item_tri)
    roff = row_off.to(torch.float64)
    c[:, 4] = c[:, 4] + c[:, 1] * roff  # move each item's origin down by its row offset
    c[:, 5] = c[:, 5] + c[:, 3] * roff
    item_coef = c.to(torch.float32)
    item_col = i_min.long()[item_tri]
    item_row = j_min.long()[item_tri] + row_off
    item_zc = zcoef[item_tri].to(torch.float32)
    zbuf = torch.full((H * W,), _INT64_MAX, dtype=torch.int64, device=device)

    # Group items by padded bounding-box shape; each group is evaluated densely as (B, h, w) blocks.
    pad_h, pad_w = _pad_size(item_h), _pad_size(item_w)
    base = 2 * W + 2  # > any padded width (padding adds at most 25 %)
    shape_key = pad_h * base + pad_w
    order = torch.argsort(shape_key)
    keys, group_sizes = torch.unique_consecutive(shape_key[order], return_counts=True)
    first = 0
    for key, size in zip(keys.tolist(), group_sizes.tolist()):
        group = order[first : first + size]
        first += size
        hp, wp = divmod(int(key), base)
        per_block = max(1, CHUNK_CANDIDATES // (hp * wp))
        for b in range(0, size, per_block):
            sel = group[b : b + per_block]
            _raster_block(
                hp, wp, sel, item_tri, item_col, item_row, item_w, item_h, item_coef, item_zc, zbuf, W,
                perspective=perspective, with_depth=z is not None,
            )  # fmt: skip

    # Resolve: winning triangle per pixel, then its barycentrics recomputed once per pixel in float64.
    covered = zbuf != _INT64_MAX
    pix = torch.nonzero(covered).squeeze(1)
    tid = torch.full_like(zbuf, -1)
    bary = torch.zeros((H * W, 3), dtype=torch.float32, device=device)
    depth = torch.zeros((H * W,), dtype=torch.float32, device=device)
    if pix.numel():
        t = zbuf.index_select(0, pix) & 0xFFFFFFFF  # place in ``tri``
        tid[pix] = tri.index_select(0, t)
        dx = (pix % W).to(torch.float64) - i_min.index_select(0, t)
        dy = (pix // W).to(torch.float64) - j_min.index_select(0, t)
        k = coef.index_select(0, t)
        l0 = k[:, 4] + k[:, 0] * dx + k[:, 1] * dy
        l1 = k[:, 5] + k[:, 2] * dx + k[:, 3] * dy
        lam = torch.stack([l0, l1, 1.0 - l0 - l1], dim=1).clamp_min(0.0)
        lam = lam / lam.sum(dim=1, keepdim=True).clamp_min(1e-30)
        if z is not None:
            zc = zcoef.index_select(0, t)
            if perspective:
                w = lam * zc
                s_ = w.sum(dim=1, keepdim=True)
                bary[pix] = (w / s_).to(torch.float32)
                depth[pix] = (1.0 / s_.squeeze(1)).to(torch.float32)
            else:
                bary[pix] = lam.to(torch.float32)
                depth[pix] = (lam * zc).sum(dim=1).to(torch.float32)
        else:
            bary[pix] = lam.to(torch.float32)
    return Fragments(tid.reshape(H, W), bary.reshape(H, W, 3), depth.reshape(H, W))


def _pad_size(n: torch.Tensor) -> torch.Tensor:
    """Round sizes up to one of 1..8, then 4 steps per octave (10, 12, 14, 16, 20, ...): ≤ 25 % padding."""
    step = torch.pow(2.0, torch.floor(torch.log2(n.clamp_min(1).to(torch.float64))) - 2).clamp_min(1).long()
    return (n + step - 1) // step * step


def _raster_block(
    hp: int,
    wp: int,
    sel: torch.Tensor,
    item_tri: torch.Tensor,
    item_col: torch.Tensor,
    item_row: torch.Tensor,
    item_w: torch.Tensor,
    item_h: torch.Tensor,
    item_coef: torch.Tensor,
    item_zc: torch.Tensor,
    zbuf: torch.Tensor,
    W: int,
    *,
    perspective: bool,
    with_depth: bool,
) -> None:
    """Evaluate items ``sel`` on their (hp, wp) padded boxes at once and z-buffer into ``zbuf`` (packed keys)."""
    device = zbuf.device
    k = item_coef.index_select(0, sel)[:, :, None, None]  # (B, 6, 1, 1) float32
    dx = torch.arange(wp, device=device, dtype=torch.float32)[None, None, :]
    dy = torch.arange(hp, device=device, dtype=torch.float32)[None, :, None]
    l0 = (k[:, 4] + k[:, 1] * dy) + k[:, 0] * dx  # (B, hp, wp)
    l1 = (k[:, 5] + k[:, 3] * dy) + k[:, 2] * dx
    l2 = 1.0 - l0 - l1
    w = item_w.index_select(0, sel)[:, None, None]
    h = item_h.index_select(0, sel)[:, None, None]
    inside = (dx < w) & (dy < h)  # the padding beyond each item's own box
    inside = inside & (l0 >= -_EDGE_EPS) & (l1 >= -_EDGE_EPS) & (l2 >= -_EDGE_EPS)
    tri = item_tri.index_select(0, sel)[:, None, None]
    if with_depth:
        zc = item_zc.index_select(0, sel)[:, :, None, None]
        d = l0 * zc[:, 0] + l1 * zc[:, 1] + l2 * zc[:, 2]
        if perspective:
            d = torch.reciprocal(d.clamp_min(1e-30))
        d = d.clamp_min(0.0)
        # Non-negative float32 bit patterns order like the floats, so (depth bits, triangle) packs into one key.
        key = (d.view(torch.int32).to(torch.int64) << 32) | tri
    else:
        key = tri.expand(-1, hp, wp)
    key = torch.where(inside, key, _INT64_MAX)
    row = item_row.index_select(0, sel)[:, None, None] + torch.arange(hp, device=device)[None, :, None]
    col = item_col.index_select(0, sel)[:, None, None] + torch.arange(wp, device=device)[None, None, :]
    pix = torch.where(inside, row * W + col, 0)
    zbuf.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amin")


# ----------------------------------------------------------------------------------------------------------
# nvdiffrast (optional, CUDA only)

_NV_CONTEXTS: dict = {}


def _nvdiffrast_context(device: torch.device):
    import nvdiffrast.torch as dr

    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    ctx = _NV_CONTEXTS.get((device.type, index))
    if ctx is None:
        ctx = dr.RasterizeCudaContext(device=torch.device(device.type, index))
        _NV_CONTEXTS[(device.type, index)] = ctx
    return ctx


def _nvdiffrast_rasterize(cam: torch.Tensor, faces: torch.Tensor, valid: torch.Tensor, camera: Camera) -> Fragments:
    """Build clip-space positions for ``camera`` (OpenCV axes) and rasterise with nvdiffrast.

    nvdiffrast samples pixel centres and stores image row r at NDC y = (2r + 1) / H - 1, so mapping our row
    coordinate v (downwards) to NDC y = 2 v / H - 1 makes its row 0 our top row with no flip of the output.
    """
    H, W = int(camera.height), int(camera.width)
    z = cam[:, 2]
    used = faces[valid].reshape(-1)
    if used.numel() == 0:
        return _empty(H, W, cam.device)
    zmin = float(z[used].min())
    zmax = float(z[used].max())
    K = camera.K
    if camera.orthographic:
        margin = 0.01 * (zmax - zmin) + 1e-3
        n, f = zmin - margin, zmax + margin
        x_ndc = 2.0 * (K[0, 0] * cam[:, 0] + K[0, 2]) / W - 1.0
        y_ndc = 2.0 * (K[1, 1] * cam[:, 1] + K[1, 2]) / H - 1.0
        z_ndc = 2.0 * (z - n) / (f - n) - 1.0
        clip = torch.stack([x_ndc, y_ndc, z_ndc, torch.ones_like(z)], dim=1)
    else:
        # Every kept vertex has z >= zmin > 0, so these planes clip nothing that the torch path would draw.
        n, f = 0.5 * zmin, 2.0 * zmax + 1e-6
        a, b = (f + n) / (f - n), -2.0 * f * n / (f - n)
        x_clip = (2.0 * K[0, 0] / W) * cam[:, 0] + (2.0 * K[0, 1] / W) * cam[:, 1] + (2.0 * K[0, 2] / W - 1.0) * z
        y_clip = (2.0 * K[1, 1] / H) * cam[:, 1] + (2.0 * K[1, 2] / H - 1.0) * z
        clip = torch.stack([x_clip, y_clip, a * z + b, z], dim=1)
    return _nvdiffrast_call(clip, faces, valid, H, W, vertex_z=z)


def _clip_2d(xy: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Pixel coordinates (P, 2) → clip positions (P, 4) at z = 0, w = 1 (same row mapping as below)."""
    ndc = torch.stack([2.0 * xy[:, 0] / W - 1.0, 2.0 * xy[:, 1] / H - 1.0], dim=1)
    ones = torch.ones_like(ndc[:, :1])
    return torch.cat([ndc, torch.zeros_like(ones), ones], dim=1)


NV_MAX_TRIANGLES = (1 << 24) - 1
"""Most triangles given to one nvdiffrast call. nvdiffrast returns triangle index + 1 in a float32 channel, which
holds integers exactly only up to 2**24; larger meshes are rasterised in batches and merged by depth."""


def _nvdiffrast_call(
    clip: torch.Tensor, faces: torch.Tensor, valid: torch.Tensor, H: int, W: int, vertex_z: torch.Tensor | None
) -> Fragments:
    """Rasterise clip-space vertices (N, 4) with the faces where ``valid``; ids are mapped back to ``faces``.

    Meshes with more than :data:`NV_MAX_TRIANGLES` kept faces go through :func:`rasterize_in_batches`.
    """
    import nvdiffrast.torch as dr

    device = clip.device
    kept = torch.nonzero(valid).squeeze(1)
    if kept.numel() == 0:
        return _empty(H, W, device)
    kept_faces = faces[kept]
    tri = kept_faces.to(torch.int32).contiguous()
    pos = clip.to(torch.float32).unsqueeze(0).contiguous()
    ctx = _nvdiffrast_context(device)

    def batch(start: int, stop: int) -> Fragments:
        rast, _ = dr.rasterize(ctx, pos, tri[start:stop].contiguous(), resolution=[H, W], grad_db=False)
        return _fragments_from_rast(rast[0], kept_faces[start:stop], vertex_z)

    merged = rasterize_in_batches(int(kept.numel()), batch, NV_MAX_TRIANGLES)
    local = merged.triangle_id
    tid = torch.where(local >= 0, kept[local.clamp_min(0)], torch.full_like(local, -1))
    return Fragments(tid, merged.barycentric, merged.depth)


def _fragments_from_rast(rast: torch.Tensor, faces: torch.Tensor, vertex_z: torch.Tensor | None) -> Fragments:
    """nvdiffrast's (H, W, 4) output → Fragments with ids local to ``faces`` (the faces given to that call)."""
    H, W = int(rast.shape[0]), int(rast.shape[1])
    local = rast[..., 3].round().long() - 1  # nvdiffrast: triangle index + 1, 0 = empty
    covered = local >= 0
    u, v = rast[..., 0], rast[..., 1]
    # nvdiffrast's (u, v) weight corners 0 and 1; corner 2 gets 1 - u - v. Already perspective-correct.
    bary = (torch.stack([u, v, 1.0 - u - v], dim=-1) * covered[..., None]).to(torch.float32)
    if vertex_z is None:
        depth = torch.zeros((H, W), dtype=torch.float32, device=rast.device)
    else:
        zc = vertex_z.to(torch.float32)[faces[local.clamp_min(0)]]  # (H, W, 3)
        depth = ((bary * zc).sum(dim=-1) * covered).to(torch.float32)
    return Fragments(local, bary.contiguous(), depth.contiguous())


def rasterize_in_batches(count: int, rasterize_batch, limit: int) -> Fragments:
    """Rasterise ``count`` triangles in consecutive batches of at most ``limit`` and keep the nearest fragment.

    ``rasterize_batch(start, stop)`` rasterises triangles ``start .. stop - 1`` and returns :class:`Fragments`
    whose ids are local to the batch (0 .. stop - start - 1, -1 where empty). The result's ids run over
    0 .. count - 1. Per pixel the smallest ``depth`` wins; on equal depth (and for 2-D rasterisation, where depth
    is 0) the earlier batch keeps the pixel. One batch is returned as it came.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    merged: Fragments | None = None
    for start in range(0, max(count, 1), limit):
        part = rasterize_batch(start, min(start + limit, count))
        tid = torch.where(part.mask, part.triangle_id + start, part.triangle_id)
        if merged is None:
            merged = Fragments(tid, part.barycentric, part.depth)
            continue
        take = part.mask & (~merged.mask | (part.depth < merged.depth))
        merged = Fragments(
            torch.where(take, tid, merged.triangle_id),
            torch.where(take[..., None], part.barycentric, merged.barycentric),
            torch.where(take, part.depth, merged.depth),
        )
    return merged


# ----------------------------------------------------------------------------------------------------------
# Differentiable nvdiffrast wrappers (used by backend.diff_render; CUDA only)


def clip_positions(cam: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Differentiable clip-space positions (N, 4) for nvdiffrast from OpenCV camera coordinates ``cam`` (N, 3).

    The same mapping as the rasteriser above (row 0 = top row, no flip); near and far planes come from the
    vertices' camera z (no gradient through them): perspective near = half the smallest z ≥ 1e-3, far = twice the
    largest, so nothing in front of the camera is clipped.
    """
    H, W = int(camera.height), int(camera.width)
    K = camera.K
    z = cam[:, 2]
    zd = z.detach()
    front = zd[zd >= 1e-3]
    zmin = float(front.min()) if front.numel() else 1e-3
    zmax = float(front.max()) if front.numel() else 1.0
    if camera.orthographic:
        margin = 0.01 * (float(zd.max()) - float(zd.min())) + 1e-3
        n, f = float(zd.min()) - margin, float(zd.max()) + margin
        x_ndc = 2.0 * (K[0, 0] * cam[:, 0] + K[0, 2]) / W - 1.0
        y_ndc = 2.0 * (K[1, 1] * cam[:, 1] + K[1, 2]) / H - 1.0
        z_ndc = 2.0 * (z - n) / (f - n) - 1.0
        return torch.stack([x_ndc, y_ndc, z_ndc, torch.ones_like(z)], dim=1)
    n, f = 0.5 * zmin, 2.0 * zmax + 1e-6
    a, b = (f + n) / (f - n), -2.0 * f * n / (f - n)
    x_clip = (2.0 * K[0, 0] / W) * cam[:, 0] + (2.0 * K[0, 1] / W) * cam[:, 1] + (2.0 * K[0, 2] / W - 1.0) * z
    y_clip = (2.0 * K[1, 1] / H) * cam[:, 1] + (2.0 * K[1, 2] / H - 1.0) * z
    return torch.stack([x_clip, y_clip, a * z + b, z], dim=1)


def nvdiffrast_rasterize_diff(clip: torch.Tensor, faces: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """nvdiffrast's rasterisation of (V, N, 4) float32 clip positions with (M, 3) int32 faces: (V, H, W, 4)
    (u, v, z/w, triangle index + 1), differentiable with respect to ``clip`` through (u, v)."""
    import nvdiffrast.torch as dr

    if faces.shape[0] > NV_MAX_TRIANGLES:
        raise ValueError(f"differentiable nvdiffrast rendering takes at most {NV_MAX_TRIANGLES} faces")
    rast, _ = dr.rasterize(_nvdiffrast_context(clip.device), clip, faces, resolution=[H, W], grad_db=False)
    return rast


def nvdiffrast_interpolate(attributes: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-vertex ``attributes`` (V, N, C) float32 interpolated at every pixel of ``rast``: (V, H, W, C)."""
    import nvdiffrast.torch as dr

    out, _ = dr.interpolate(attributes.contiguous(), rast, faces)
    return out


def nvdiffrast_antialias(image: torch.Tensor, rast: torch.Tensor, clip: torch.Tensor, faces: torch.Tensor):
    """nvdiffrast's analytic silhouette antialiasing of ``image`` (V, H, W, C) float32; gradients reach ``image``
    and ``clip``."""
    import nvdiffrast.torch as dr

    return dr.antialias(image, rast, clip, faces)
