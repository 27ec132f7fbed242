"""Mesh extraction (fused depth / density iso-surface, clean-up, decimation) and normalisation on analytic scenes."""

import numpy as np
import pytest
import torch
import trimesh

from backend.cameras import orbit_cameras
from backend.extract import ExtractConfig, decimate, extract, remove_small_components
from backend.mesh import Mesh
from backend.normalise import NormaliseConfig, normalise
from backend.raster import rasterize
from backend.views import View


class SphereField(torch.nn.Module):
    """Stands in for a TriplaneField: an opaque sphere (σ = 500 inside radius r) of constant grey."""

    def __init__(self, radius: float, centre=(0.0, 0.0, 0.0)):
        super().__init__()
        self.planes = torch.nn.Parameter(torch.zeros(3, 1, 2, 2))
        self.radius = radius
        self.centre = torch.tensor(centre)

    def density(self, p):
        return torch.where((p - self.centre).norm(dim=-1) < self.radius, 500.0, 0.0)

    def color(self, p):
        return torch.full_like(p, 0.5)

    def forward(self, p):
        return self.density(p), self.color(p)


def ring_views(size=48, elevations=(30.0, -20.0)):
    cams = orbit_cameras(8, 3.0, 45.0, size, elevations_degrees=elevations)
    blank = np.zeros((size, size, 3), np.float32)
    return [View(f"v{i}", c, blank, np.ones((size, size), np.float32)) for i, c in enumerate(cams)]


def radii(mesh: Mesh, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    return np.linalg.norm(mesh.vertices.detach().numpy() - np.asarray(centre), axis=1)


def test_fused_surface_of_a_sphere():
    field = SphereField(0.5)
    config = ExtractConfig(resolution=48, surface="fused", depth_map_size=64, truncation=0.2)
    mesh = extract(field, None, config, views=ring_views())
    r = radii(mesh)
    cell = 2 / 47
    assert abs(np.median(r) - 0.5) < cell
    assert np.quantile(np.abs(r - 0.5), 0.95) < 1.5 * cell
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    assert tm.is_watertight and tm.volume > 0


def test_density_surface_fills_what_no_view_sees():
    # A hollow shell (radius 0.4 to 0.6) open at the bottom, seen only from above: its inner wall is never seen,
    # so it must not become a second surface. Without views it is there (the cavity opens to the outside).
    class OpenShell(SphereField):
        def density(self, p):
            n = p.norm(dim=-1)
            return torch.where((n < 0.6) & (n > 0.4) & (p[:, 2] > -0.3), 500.0, 0.0)

    config = ExtractConfig(
        resolution=48, surface="density", level=10.0, blur_voxels=0, visibility_map_size=64, truncation=0.2
    )
    with_views = extract(OpenShell(0.6), None, config, views=ring_views(elevations=(30.0, 50.0)))
    without = extract(OpenShell(0.6), None, config)
    top = lambda m: radii(m)[m.vertices[:, 2].numpy() > 0.2]  # noqa: E731
    assert top(with_views).min() > 0.5  # only the outer wall above the opening
    assert top(without).min() < 0.45


def test_small_components_are_dropped():
    big = trimesh.creation.icosphere(3, 0.5)
    small = trimesh.creation.icosphere(1, 0.05)
    small.apply_translation([0.8, 0, 0])
    both = trimesh.util.concatenate([big, small])
    mesh = Mesh(torch.tensor(both.vertices, dtype=torch.float32), torch.tensor(both.faces))
    cleaned = remove_small_components(mesh, 0.1)
    assert cleaned.num_faces == len(big.faces)
    assert radii(cleaned).max() < 0.51


def test_decimation_reaches_the_face_budget():
    sphere = trimesh.creation.icosphere(4, 0.5)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    small = decimate(mesh, 500)
    assert 0 < small.num_faces <= 500
    assert np.abs(radii(small) - 0.5).max() < 0.03


def test_bounds_from_masks_find_an_off_centre_object():
    centre, radius = np.array([2.0, -1.0, 0.5]), 0.3
    sphere = trimesh.creation.icosphere(3, radius)
    verts = torch.tensor(sphere.vertices + centre, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    views = []
    for i, cam in enumerate(orbit_cameras(10, 2.5, 40.0, 64, elevations_degrees=(25.0, -15.0), target=centre)):
        mask = rasterize(verts, faces, cam).mask.float().numpy()
        views.append(View(f"v{i}", cam, np.zeros((64, 64, 3), np.float32), mask))
    canonical, frame, bounds = normalise(views, None, NormaliseConfig(), "cpu")
    assert np.allclose(bounds.centre, centre, atol=0.03)
    assert np.all(bounds.size > 2 * radius * 0.95) and np.all(bounds.size < 2 * radius * 1.35)
    # The object now sits in the middle of the canonical box, filling most of it.
    p = frame.to_canonical_points(centre[None])[0]
    assert np.allclose(p, 0, atol=0.1)
    assert 0.6 < radius * frame.scale < 1.0  # canonical units per world unit
    # Cameras move with the world: the object's centre still projects to the image centre.
    from backend.cameras import project

    uv, _ = project(canonical[0].camera, np.zeros((1, 3)))
    assert np.allclose(uv, 32, atol=0.5)


def test_extraction_loops_report_and_honour_cancel():
    """Depth maps report per view and check per chunk of rays; the density grid reports per chunk; a cancel stops
    the loop at the next chunk or view."""
    from backend.errors import Cancelled
    from backend.field import density_grid
    from backend.progress import Hooks

    class CountingSphere(SphereField):
        calls = 0

        def density(self, p):
            CountingSphere.calls += 1
            return super().density(p)

    seen = []
    hooks = Hooks(progress=lambda stage, step, total, message: seen.append((stage, step, total, message)))
    density_grid(CountingSphere(0.5), 16, chunk=1000, hooks=hooks)
    assert [(s, step, total) for s, step, total, _ in seen] == [("extract", n, 5) for n in range(5)]  # 16³ / 1000
    assert CountingSphere.calls == 5

    def cancel_at_chunk(stage, step, total, message):
        if step == 1:
            hooks.cancel()

    hooks = Hooks(progress=cancel_at_chunk)
    CountingSphere.calls = 0
    with pytest.raises(Cancelled):
        density_grid(CountingSphere(0.5), 16, chunk=1000, hooks=hooks)
    assert CountingSphere.calls == 2  # chunks 0 and 1 ran, chunk 2 never started

    seen.clear()
    hooks = Hooks(progress=lambda stage, step, total, message: seen.append((stage, step, total, message)))
    views = ring_views()
    extract(SphereField(0.5), None, ExtractConfig(resolution=24, depth_map_size=32), hooks, views=views)
    depth_reports = [(step, total) for _, step, total, message in seen if message.startswith("depth map")]
    assert depth_reports == [(n, len(views)) for n in range(len(views))]

    def cancel_at_third_view(stage, step, total, message):
        seen.append(message)
        if message.startswith("depth map 3/"):
            hooks.cancel()

    seen = []
    hooks = Hooks(progress=cancel_at_third_view)
    with pytest.raises(Cancelled):
        extract(SphereField(0.5), None, ExtractConfig(resolution=24, depth_map_size=32), hooks, views=views)
    assert seen[-1] == f"depth map 3/{len(views)}"  # stopped inside the depth-map loop: no 4th view, no meshing
