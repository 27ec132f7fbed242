"""Differentiable mesh rendering: images whose gradients reach vertex positions and per-vertex attributes.

Two implementations produce the same :class:`MeshRender`:

* pure torch (CPU and CUDA). Visibility comes from :func:`backend.raster.rasterize` (triangle ids need no
  gradient); barycentrics, depth and normals are then recomputed differentiably from the projected vertices at
  each covered pixel centre. Silhouettes are antialiased analytically between neighbouring pixels: each
  *silhouette edge* (an edge between a face seen from the front and one seen from behind, or a boundary edge) is
  intersected with the segments joining neighbouring pixel centres along its major axis, and where it crosses one
  at distance d (pixels) from the inside centre, the pixel on the far side of the segment's midpoint takes
  ``|d − 0.5|`` of the other pixel's value. That makes the coverage a continuous, piecewise-smooth function of
  the vertex positions, so silhouette pixels carry gradients to the edge's two vertices (a hard rasteriser has
  none there). The edges are found per view, so triangles much smaller than a pixel still get silhouette
  gradients; a crossing is kept only where the surface behind it (the far pixel's depth) lies behind the edge.
* nvdiffrast (CUDA, when importable; wrapped in :mod:`backend.raster`): its rasterize / interpolate /
  antialias, whose antialias works between neighbouring pixels the same way (on the triangle seen at each
  pixel).

Conventions: :mod:`backend.cameras` (OpenCV axes, pixel centres at +0.5). The attribute image is premultiplied
by coverage (zero where empty), so ``attributes + (1 − mask) · background`` composites it. Depth and normals are
not antialiased: they are the visible surface's camera z and world-space normal at each covered pixel centre
(0 where empty), differentiable inside triangles. Views are rendered one at a time, so memory grows with
views × pixels and with faces, never with their product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import raster
from .cameras import Camera
from .mesh import Mesh, corners


@dataclass
class MeshRender:
    """Renders of V views, all H × W.

    ``mask``: (V, H, W) coverage in [0, 1], antialiased at silhouettes. ``attributes``: (V, H, W, C) interpolated
    per-vertex attributes premultiplied by coverage (antialiased), or None when none were given. ``depth``:
    (V, H, W) camera z of the visible surface, 0 where empty. ``normals``: (V, H, W, 3) world-space unit normals,
    0 where empty. ``triangle_id``: (V, H, W) int64 visible face (-1 where empty), no gradient.
    """

    mask: torch.Tensor
    attributes: torch.Tensor | None
    depth: torch.Tensor
    normals: torch.Tensor
    triangle_id: torch.Tensor


@dataclass(frozen=True)
class EdgeTopology:
    """The edges of a triangle mesh (depends on its faces only; compute once per face array).

    ``edges``: (E, 2) int64 vertex ids (smaller first). ``faces``: (E, 2) int64 the faces on either side, -1 for
    the second where the edge is a boundary (an edge shared by more than two faces keeps its first two).
    ``opposite``: (E,) int64 the third vertex of the first face (says on which side of the edge that face lies).
    """

    edges: torch.Tensor
    faces: torch.Tensor
    opposite: torch.Tensor


def edge_topology(faces: torch.Tensor) -> EdgeTopology:
    """:class:`EdgeTopology` of ``faces`` (M, 3) int."""
    faces = faces.to(torch.int64)
    M = faces.shape[0]
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # (3M, 2), edge k of face f at k*M + f
    third = torch.cat([faces[:, 2], faces[:, 0], faces[:, 1]])
    owner = torch.arange(M, device=faces.device).repeat(3)
    lo, hi = pairs.amin(dim=1), pairs.amax(dim=1)
    n = int(faces.max()) + 1 if M else 1
    key = lo * n + hi
    order = torch.argsort(key, stable=True)
    _, counts = torch.unique_consecutive(key[order], return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    a = order[first]
    second = torch.where(counts > 1, order[(first + 1).clamp_max(order.numel() - 1)], -1)
    edge_faces = torch.stack([owner[a], torch.where(second >= 0, owner[second.clamp_min(0)], -1)], dim=1)
    return EdgeTopology(torch.stack([lo[a], hi[a]], dim=1), edge_faces, third[a])


def render(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: list[Camera],
    attributes: torch.Tensor | None = None,
    *,
    topology: EdgeTopology | None = None,
    smooth_normals: bool = False,
    antialias: bool = True,
    cull_backfaces: bool = False,
    backend: str = "auto",
    near: float = 1e-3,
) -> MeshRender:
    """Render a mesh into ``cameras`` (all of one size) with gradients to ``vertices`` and ``attributes``.

    ``vertices``: (N, 3) world positions, or (V, N, 3) one set per camera; ``faces`` (M, 3) int, shared.
    ``attributes``: (N, C) or (V, N, C) per-vertex values (colours, features), or None. ``topology``: from
    :func:`edge_topology` of ``faces`` (computed when None; pass it when rendering the same faces repeatedly).
    ``smooth_normals``: interpolate area-weighted vertex normals instead of using face normals.
    ``antialias``: False gives hard pixel-centre coverage (no silhouette gradients). ``cull_backfaces``: do not
    rasterise faces seen from behind; right (and about twice as fast) for closed, consistently wound meshes only.
    ``backend``: ``"auto"`` (nvdiffrast on CUDA when importable), ``"torch"`` or ``"nvdiffrast"``. Triangles
    with a vertex closer than ``near`` are skipped by the torch path (as in :func:`backend.raster.rasterize`).
    """
    if not cameras:
        raise ValueError("render needs at least one camera")
    H, W = int(cameras[0].height), int(cameras[0].width)
    if any((int(c.height), int(c.width)) != (H, W) for c in cameras):
        raise ValueError("render: all cameras must share one image size; use Camera.scaled")
    V = len(cameras)
    verts = _per_view(vertices, V, "vertices")
    attrs = None if attributes is None else _per_view(attributes, V, "attributes")
    faces = faces.to(device=vertices.device, dtype=torch.int64)
    if raster._choose_backend(backend, vertices.device) == "nvdiffrast":
        return _render_nvdiffrast(verts, faces, cameras, attrs, smooth_normals, antialias)
    if antialias and topology is None:
        topology = edge_topology(faces)
    views = [
        _render_view(verts(v), faces, cam, None if attrs is None else attrs(v), topology, smooth_normals,
                     antialias, cull_backfaces, near)
        for v, cam in enumerate(cameras)
    ]  # fmt: skip
    return MeshRender(
        mask=torch.stack([r[0] for r in views]),
        attributes=None if attrs is None else torch.stack([r[1] for r in views]),
        depth=torch.stack([r[2] for r in views]),
        normals=torch.stack([r[3] for r in views]),
        triangle_id=torch.stack([r[4] for r in views]),
    )


def _per_view(x: torch.Tensor, V: int, name: str):
    if x.dim() == 2:
        return lambda v: x
    if x.dim() == 3 and x.shape[0] == V:
        return lambda v: x[v]
    raise ValueError(f"{name} must be (N, C) or (V, N, C) with V = {V} cameras, got shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------------------
# Pure-torch path


def _project(vertices: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable: pixel coordinates (N, 2) (corner convention) and camera z (N,), in ``vertices``' dtype."""
    w2c = torch.as_tensor(camera.world_to_camera, dtype=vertices.dtype, device=vertices.device)
    K = torch.as_tensor(camera.K, dtype=vertices.dtype, device=vertices.device)
    cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    if camera.orthographic:
        return cam[:, :2] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2], z
    safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    return (cam[:, :2] / safe[:, None]) @ K[:2, :2].T + K[:2, 2], z


def _facing(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(M,) bool: the face's counter-clockwise side faces the camera (no gradient)."""
    with torch.no_grad():
        w2c = torch.as_tensor(camera.world_to_camera, dtype=torch.float64, device=vertices.device)
        q = corners(vertices.detach().to(torch.float64) @ w2c[:3, :3].T + w2c[:3, 3], faces)  # (M, 3, 3) camera
        if camera.orthographic:
            return torch.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0], dim=-1)[:, 2] < 0
        return (torch.cross(q[:, 1], q[:, 2], dim=-1) * q[:, 0]).sum(dim=-1) < 0  # (q1 − q0) × (q2 − q0) · q0


def _render_view(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    camera: Camera,
    attributes: torch.Tensor | None,
    topology: EdgeTopology | None,
    smooth_normals: bool,
    antialias: bool,
    cull_backfaces: bool,
    near: float,
):
    H, W = int(camera.height), int(camera.width)
    device, dtype = vertices.device, vertices.dtype
    facing = _facing(vertices, faces, camera) if (cull_backfaces or antialias) else None
    if cull_backfaces:
        drawn = torch.nonzero(facing).squeeze(1)
        frags = raster.rasterize(vertices, faces[drawn], camera, backend="torch", near=near)
        tid = (
            frags.triangle_id
            if drawn.numel() == 0
            else torch.where(frags.mask, drawn[frags.triangle_id.clamp_min(0)], -1)
        )
    else:
        frags = raster.rasterize(vertices, faces, camera, backend="torch", near=near)
        tid = frags.triangle_id
    tid = tid.reshape(-1)
    pix = torch.nonzero(tid >= 0).squeeze(1)
    t = tid[pix]
    hit = faces.index_select(0, t)  # (P, 3) the face seen at each covered pixel

    xy, z = _project(vertices, camera)
    centre = torch.stack([(pix % W).to(dtype), (pix // W).to(dtype)], dim=1) + 0.5
    p = corners(xy, hit) - centre[:, None, :]  # (P, 3, 2) corners relative to the pixel centre
    e0 = p[:, 1, 0] * p[:, 2, 1] - p[:, 1, 1] * p[:, 2, 0]  # twice the signed area opposite each corner
    e1 = p[:, 2, 0] * p[:, 0, 1] - p[:, 2, 1] * p[:, 0, 0]
    e2 = p[:, 0, 0] * p[:, 1, 1] - p[:, 0, 1] * p[:, 1, 0]
    lam = torch.stack([e0, e1, e2], dim=1)
    lam = lam / lam.sum(dim=1, keepdim=True)  # screen-space barycentrics
    zc = corners(z, hit)
    if camera.orthographic:
        bary = lam
        depth_p = (lam * zc).sum(dim=1)
    else:
        w = lam / zc
        s = w.sum(dim=1, keepdim=True)
        bary = w / s  # perspective-correct
        depth_p = 1.0 / s.squeeze(1)

    if smooth_normals:
        vn = Mesh(vertices, faces).vertex_normals()
        n_p = (corners(vn, hit) * bary[:, :, None]).sum(dim=1)
    else:
        v = corners(vertices, hit)
        n_p = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    n_p = n_p / n_p.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    HW = H * W
    covered = (tid >= 0).to(dtype)
    depth = torch.zeros(HW, dtype=dtype, device=device).index_put((pix,), depth_p)
    normals = torch.zeros((HW, 3), dtype=dtype, device=device).index_put((pix,), n_p)
    channels = [covered[:, None]]
    if attributes is not None:
        a_p = (corners(attributes, hit) * bary[:, :, None].to(attributes.dtype)).sum(dim=1)
        channels.append(torch.zeros((HW, attributes.shape[1]), dtype=a_p.dtype, device=device).index_put((pix,), a_p))
    image = torch.cat(channels, dim=1)  # (HW, 1 + C): coverage first
    if antialias and topology is not None:
        far = torch.where(tid >= 0, depth.detach(), torch.full_like(depth, float("inf")))
        image = _antialias(image, xy, z, facing, topology, far, H, W, orthographic=camera.orthographic, near=near)
    attr_img = None if attributes is None else image[:, 1:].reshape(H, W, -1)
    return image[:, 0].reshape(H, W), attr_img, depth.reshape(H, W), normals.reshape(H, W, 3), tid.reshape(H, W)


def _antialias(
    image: torch.Tensor,
    xy: torch.Tensor,
    z: torch.Tensor,
    facing: torch.Tensor,
    topology: EdgeTopology,
    far: torch.Tensor,
    H: int,
    W: int,
    *,
    orthographic: bool,
    near: float,
) -> torch.Tensor:
    """Blend ``image`` (H·W, C) across the view's silhouette edges (see the module docstring)."""
    ef = topology.faces
    f0, f1 = ef[:, 0], ef[:, 1]
    silhouette = (f1 < 0) | (facing[f0] != facing[f1.clamp_min(0)])
    e = torch.nonzero(silhouette).squeeze(1)
    ends = topology.edges[e]  # (S, 2)
    with torch.no_grad():
        zd = z.detach()
        ok = (zd[ends] >= near).all(dim=1) & (zd[topology.opposite[e]] >= near)
        e, ends = e[ok], ends[ok]
        pa, pb = xy[ends[:, 0]].detach(), xy[ends[:, 1]].detach()
        pc = xy[topology.opposite[e]].detach()
        d = pb - pa
        # Which side the faces lie on: sign of cross(pb − pa, pc − pa).
        side = torch.sign(d[:, 0] * (pc[:, 1] - pa[:, 1]) - d[:, 1] * (pc[:, 0] - pa[:, 0]))
        # Major axis: a mostly horizontal edge crosses the vertical segments between pixel centres (axis 1 = y is
        # the pair direction), a mostly vertical one the horizontal segments.
        horizontal = d[:, 0].abs() >= d[:, 1].abs()
        major = torch.where(horizontal, 0, 1)  # coordinate that indexes the crossings
        lo = torch.minimum(pa, pb).gather(1, major[:, None]).squeeze(1)
        hi = torch.maximum(pa, pb).gather(1, major[:, None]).squeeze(1)
        limit = torch.where(horizontal, W, H).to(lo.dtype)
        first = torch.ceil(lo - 0.5).clamp(0, None)
        last = torch.minimum(torch.ceil(hi - 0.5) - 1, limit - 1)  # centres k + 0.5 in [lo, hi)
        count = (last - first + 1).clamp_min(0).long()
        keep = count > 0
        e, ends, side, horizontal, first, count = (
            e[keep],
            ends[keep],
            side[keep],
            horizontal[keep],
            first[keep],
            count[keep],
        )
        edge_of = torch.repeat_interleave(torch.arange(e.numel(), device=xy.device), count)
        start = torch.cumsum(count, 0) - count
        k = first[edge_of] + (torch.arange(edge_of.numel(), device=xy.device) - start[edge_of]).to(first.dtype)
    if edge_of.numel() == 0:
        return image
    hor = horizontal[edge_of]
    ia, ib = ends[edge_of, 0], ends[edge_of, 1]
    a, b = xy[ia], xy[ib]
    # Along the major coordinate u the crossing sits at u = k + 0.5; s is its fraction from a to b.
    ua = torch.where(hor, a[:, 0], a[:, 1])
    ub = torch.where(hor, b[:, 0], b[:, 1])
    va = torch.where(hor, a[:, 1], a[:, 0])
    vb = torch.where(hor, b[:, 1], b[:, 0])
    s = (k.to(xy.dtype) + 0.5 - ua) / (ub - ua)
    v = va + s * (vb - va)  # minor coordinate of the crossing (differentiable)
    with torch.no_grad():
        v0 = torch.floor(v.detach() - 0.5)  # pixel centres v0 + 0.5 ≤ v < v0 + 1.5 along the minor axis
        minor_limit = torch.where(hor, H, W)
        valid = (v0 >= 0) & (v0 + 1 < minor_limit)
        # The +minor side of the edge is where the faces are iff the sign below matches ``side``.
        dd = (b - a).detach()
        plus_inside = torch.where(hor, torch.sign(dd[:, 0]), -torch.sign(dd[:, 1])) == side[edge_of]
        col0 = torch.where(hor, k, v0).long()
        row0 = torch.where(hor, v0, k).long()
        step = torch.where(hor, W, 1)  # flat index step to the +minor neighbour
        p0 = (row0 * W + col0).clamp(0, H * W - 1)
        p1 = (p0 + step).clamp(0, H * W - 1)
        pin = torch.where(plus_inside, p1, p0)
        pout = torch.where(plus_inside, p0, p1)
        zs = z.detach()
        if orthographic:
            z_edge = zs[ia] + s.detach() * (zs[ib] - zs[ia])
        else:
            z_edge = 1.0 / (1.0 / zs[ia] + s.detach() * (1.0 / zs[ib] - 1.0 / zs[ia]))
        valid = valid & (far[pout] > z_edge * (1 + 1e-4))
        sel = torch.nonzero(valid).squeeze(1)
        if sel.numel() == 0:
            return image
        # A segment between two pixel centres takes one crossing: the nearest silhouette edge. A dense mesh's
        # outline wiggles below the pixel size, so several edges can cross one segment; their blends would add up
        # to coverage far outside [0, 1].
        segment = torch.minimum(pin, pout)[sel] * 2 + hor[sel].long()
        z_sel = z_edge[sel]
        nearest = torch.full((2 * H * W,), float("inf"), dtype=z_sel.dtype, device=z_sel.device)
        nearest = nearest.scatter_reduce(0, segment, z_sel, "amin")
        front = torch.nonzero(z_sel <= nearest[segment]).squeeze(1)
        order = torch.full((2 * H * W,), sel.numel(), dtype=torch.int64, device=sel.device)
        order = order.scatter_reduce(0, segment[front], front, "amin")  # ties: the first
        sel = sel[order[order < sel.numel()]]
    frac = v[sel] - (v0[sel] + 0.5)  # distance of the crossing from the −minor pixel centre, in [0, 1)
    d_in = torch.where(plus_inside[sel], 1.0 - frac, frac)  # … from the inside pixel centre
    pin, pout = pin[sel], pout[sel]
    diff = image[pin] - image[pout]  # inside value − outside value
    w = (d_in - 0.5)[:, None]
    # w > 0: the edge passes the midpoint and covers part of the outside pixel; w < 0: it uncovers the inside one.
    target = torch.where(w[:, 0] > 0, pout, pin)
    return image.index_add(0, target, w * diff)


# ----------------------------------------------------------------------------------------------------------
# nvdiffrast path (CUDA)


def _render_nvdiffrast(verts, faces, cameras, attrs, smooth_normals, antialias) -> MeshRender:
    V = len(cameras)
    H, W = int(cameras[0].height), int(cameras[0].width)
    clip, zs, normals_v = [], [], []
    for v, camera in enumerate(cameras):
        vertices = verts(v)
        w2c = torch.as_tensor(camera.world_to_camera, dtype=vertices.dtype, device=vertices.device)
        cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
        clip.append(raster.clip_positions(cam, camera))
        zs.append(cam[:, 2:3])
        if smooth_normals:
            normals_v.append(Mesh(vertices, faces).vertex_normals())
    clip = torch.stack(clip).to(torch.float32).contiguous()  # (V, N, 4)
    tri = faces.to(torch.int32).contiguous()
    rast = raster.nvdiffrast_rasterize_diff(clip, tri, H, W)  # (V, H, W, 4)
    tid = rast[..., 3].detach().round().long() - 1
    covered = (tid >= 0).to(torch.float32)
    depth = raster.nvdiffrast_interpolate(torch.stack(zs).to(torch.float32), rast, tri)[..., 0] * covered
    if smooth_normals:
        n = raster.nvdiffrast_interpolate(torch.stack(normals_v).to(torch.float32), rast, tri)
    else:
        vv = torch.stack([verts(v) for v in range(V)]).to(torch.float32)  # (V, N, 3)
        fv = vv[:, faces]  # (V, M, 3, 3)
        fn = torch.cross(fv[:, :, 1] - fv[:, :, 0], fv[:, :, 2] - fv[:, :, 0], dim=-1)
        n = torch.gather(fn, 1, tid.clamp_min(0).reshape(V, -1, 1).expand(-1, -1, 3)).reshape(V, H, W, 3)
    normals = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20) * covered[..., None]
    image = covered[..., None]
    if attrs is not None:
        a = raster.nvdiffrast_interpolate(torch.stack([attrs(v) for v in range(V)]).to(torch.float32), rast, tri)
        image = torch.cat([image, a * covered[..., None]], dim=-1)
    if antialias:
        image = raster.nvdiffrast_antialias(image.contiguous(), rast, clip, tri)
    return MeshRender(
        mask=image[..., 0],
        attributes=None if attrs is None else image[..., 1:],
        depth=depth,
        normals=normals,
        triangle_id=tid,
    )
