"""The fit's per-step ray sampling: rays computed from the images equal ``ray_bundle``'s, the batch mix is the
configured one, and what is held scales with the pixels' own values, not with per-pixel rays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.cameras import Camera, intrinsics, look_at, ray_bundle
from backend.fit import gather_pixels, total_variation
from backend.views import View


def views_of_mixed_kinds(seed: int = 0) -> list[View]:
    """A pinhole 40 × 30, an orthographic 24 × 32 and an off-centre pinhole 17 × 11 view, each with a mask (a
    disc) and the last two with depth (the first one without: its depth is all unknown)."""
    rng = np.random.default_rng(seed)
    cams = [
        Camera(look_at((0.3, -4.0, 0.6), (0.0, 0.0, 0.0)), intrinsics(30.0, 28.0, 20.3, 14.7), 40, 30),
        Camera(look_at((3.0, 1.0, -2.5), (0.1, 0.0, 0.0)), intrinsics(11.0, 9.0, 12.2, 15.8), 24, 32, True),
        Camera(look_at((-2.0, 2.5, 1.5), (0.0, 0.2, 0.0)), intrinsics(14.0, 15.5, 5.1, 7.9), 17, 11),
    ]
    views = []
    for n, cam in enumerate(cams):
        jj, ii = np.mgrid[0 : cam.height, 0 : cam.width]
        disc = (ii - 0.5 * cam.width) ** 2 + (jj - 0.5 * cam.height) ** 2 < (0.2 * cam.height) ** 2
        rgb = rng.uniform(size=(cam.height, cam.width, 3)).astype(np.float32)
        depth = None if n == 0 else (rng.uniform(2.0, 5.0, size=disc.shape) * disc).astype(np.float32)
        views.append(View(f"v{n}", cam, rgb, disc.astype(np.float32), depth))
    return views


def test_rays_of_every_pixel_equal_ray_bundle():
    views = views_of_mixed_kinds()
    pixels = gather_pixels(views, "cpu")
    bundles = [ray_bundle(v.camera) for v in views]
    origins = torch.cat([o.reshape(-1, 3) for o, _ in bundles])
    dirs = torch.cat([d.reshape(-1, 3) for _, d in bundles])
    index = torch.randperm(pixels.count)  # any order, views mixed within one batch
    rays = pixels.take(index)
    torch.testing.assert_close(rays.origins, origins[index], atol=1e-6, rtol=0)
    torch.testing.assert_close(rays.dirs, dirs[index], atol=1e-6, rtol=0)
    # The pixels' own values come along unchanged.
    rgb = torch.cat([torch.from_numpy(v.rgb).reshape(-1, 3) for v in views])
    alpha = torch.cat([torch.from_numpy(v.mask).reshape(-1) for v in views])
    depth = torch.cat([torch.zeros(30 * 40)] + [torch.from_numpy(v.depth).reshape(-1) for v in views[1:]])
    assert torch.equal(rays.rgb, rgb[index]) and torch.equal(rays.alpha, alpha[index])
    assert torch.equal(rays.depth, depth[index])
    # zdir: camera z per unit of t (1 along the axis of an orthographic view, cos of the off-axis angle otherwise).
    forward = torch.cat([torch.tensor(v.camera.forward).float().expand(v.camera.height * v.camera.width, 3)
                         for v in views])  # fmt: skip
    torch.testing.assert_close(rays.zdir, (dirs * forward).sum(-1)[index], atol=1e-6, rtol=0)
    ortho = slice(30 * 40, 30 * 40 + 32 * 24)
    torch.testing.assert_close(pixels.take(torch.arange(pixels.count)[ortho]).zdir, torch.ones(32 * 24))


def _dilated(mask: np.ndarray) -> np.ndarray:
    """Pixels within 4 pixels (Chebyshev) of the mask: the 9 × 9 neighbourhood, written out."""
    H, W = mask.shape
    padded = np.pad(mask > 0, 4)
    return np.any([padded[dy : dy + H, dx : dx + W] for dy in range(9) for dx in range(9)], axis=0)


def test_sampled_batches_have_the_configured_foreground_share():
    views = views_of_mixed_kinds()
    pixels = gather_pixels(views, "cpu")
    near = np.concatenate([_dilated(v.mask).reshape(-1) for v in views])
    assert torch.equal(pixels.foreground.long(), torch.from_numpy(np.flatnonzero(near)))
    torch.manual_seed(0)
    index = pixels.sample(200_000, 0.8)
    assert index.dtype == torch.int64 and int(index.min()) >= 0 and int(index.max()) < pixels.count
    near_share = near.mean()  # measured: 0.409
    expected = 0.8 + 0.2 * near_share  # the first 80 %, then uniform draws that land near the object
    assert abs(near[index.numpy()].mean() - expected) < 0.005  # measured: |diff| 4.6e-4
    # The uniform part covers every view in proportion to its pixels (1200, 768 and 187 of 2155).
    offsets = pixels.offsets.numpy()
    uniform = index[160_000:].numpy()
    share = np.histogram(uniform, bins=offsets)[0] / len(uniform)
    np.testing.assert_allclose(share, np.diff(offsets) / pixels.count, atol=0.005)  # measured: ≤ 2.1e-3

    # No masks: every pixel counts as near the object, and no index list is held.
    bare = gather_pixels([View(v.name, v.camera, v.rgb) for v in views], "cpu")
    assert bare.foreground is None and bare.alpha is None and bare.depth is None
    assert len(bare.sample(100, 0.8)) == 100


def test_held_bytes_scale_with_pixel_values_not_rays():
    views = views_of_mixed_kinds()
    pixels = gather_pixels(views, "cpu")
    P, V = pixels.count, len(views)
    assert P == 40 * 30 + 24 * 32 + 17 * 11
    n_near = len(pixels.foreground)
    assert pixels.foreground.dtype == torch.int32
    # Per pixel: rgb 3 + alpha 1 + depth 1 float32; per near pixel one int32 index; per view the camera:
    # offsets (V + 1) and widths int64, [fx fy cx cy] and a 3 × 4 camera-to-world float64, forward float32, a flag.
    per_view = 8 + 8 + 4 * 8 + 12 * 8 + 3 * 4 + 1
    assert pixels.nbytes == P * (3 + 1 + 1) * 4 + n_near * 4 + V * per_view + 8
    # What the per-pixel rays held (origins, dirs, rgb, alpha, depth, zdir float32 and int64 near indices).
    rays_bytes = P * (3 + 3 + 3 + 1 + 1 + 1) * 4 + n_near * 8
    assert pixels.nbytes < 0.45 * rays_bytes  # measured: 0.426
    # The ``high`` preset's largest job (50 views of 1600²) holds 50 · 1600² · 20 B ≈ 2.6 GB of images with depth,
    # masks and colour, plus ≤ 4 B per near pixel, where the rays took ≈ 6.1 GB + 8 B per near pixel.


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rays_match_cpu():
    views = views_of_mixed_kinds()
    cpu, gpu = gather_pixels(views, "cpu"), gather_pixels(views, "cuda")
    index = torch.arange(cpu.count)
    a, b = cpu.take(index), gpu.take(index.cuda())
    torch.testing.assert_close(b.origins.cpu(), a.origins, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.dirs.cpu(), a.dirs, atol=1e-6, rtol=0)
    assert torch.equal(gpu.foreground.cpu(), cpu.foreground)


def test_the_same_inputs_give_the_same_fit_whatever_ran_before():
    """The fit seeds its own randomness (field initialisation, rays, backgrounds) and leaves the caller's generator
    as it was: a preset on the same views gives the same field on a busy machine as on an idle one."""
    from dataclasses import replace

    from backend.field import FieldConfig
    from backend.fit import FitConfig, fit
    from backend.synthetic import SceneConfig, make_scene

    views = make_scene(SceneConfig(size=32, train_views=6, test_views=1)).train
    config = FitConfig(steps=4, rays_per_step=256, hull_resolution=24, field=FieldConfig(resolution=16, channels=4))
    planes = []
    for outside_seed in (1, 2):
        torch.manual_seed(outside_seed)
        before = torch.random.get_rng_state()
        planes.append(fit(views, config, "cpu").field.planes.detach())
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream is untouched
    assert torch.equal(planes[0], planes[1])
    other = fit(views, replace(config, seed=1), "cpu").field.planes.detach()
    assert not torch.equal(planes[0], other)


def test_total_variation_and_its_gradient_match_autograd_through_slices():
    planes = torch.randn(3, 4, 9, 7, dtype=torch.float64, requires_grad=True)
    by_slices = (planes[..., :, 1:] - planes[..., :, :-1]).square().mean() + (
        planes[..., 1:, :] - planes[..., :-1, :]
    ).square().mean()
    expected = torch.autograd.grad(2.5 * by_slices, planes)[0]
    value = total_variation(planes)
    assert float(value.detach()) == pytest.approx(float(by_slices.detach()), rel=1e-12)
    assert torch.allclose(torch.autograd.grad(2.5 * value, planes)[0], expected, rtol=1e-12, atol=1e-15)
