"""Parity with numbers from the official GTR modules (tests/data/parity_small.safetensors, see PARITY.md in the
shared reference): input building, generator, point decoding, volume rendering, mesh extraction, refinement.

Tolerances are relative to the values' magnitude, ``|a − e| ≤ atol + rtol·max|e|``, and derived from float32
arithmetic (machine epsilon EPS = 2⁻²³ ≈ 1.19e-7) for the computation each result goes through; docs/PARITY.md
explains each one and lists what is bit-exact on every machine (compared with 0). The measured errors (AMD EPYC,
torch 2.13 CPU) are in the comments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from backend.field import density_grid, grid_points, sample_planes
from backend.gtr.checkpoint import Weights, build_model, read_checkpoint, save_weights
from backend.gtr.config import SMALL
from backend.gtr.decoder import GTRField
from backend.gtr.generator import Generator
from backend.gtr.geometry import extract_mesh, vertex_colors_uint8
from backend.gtr.rays import camera_tensors, composite_on_white, generator_input, pixel_rays, truncate_8bit
from backend.inputs import load_job
from backend.refine import GTRRefineConfig, refine_texture_gtr
from backend.volume import near_far, render_rays_dense

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "parity_small.safetensors"
EPS = float(torch.finfo(torch.float32).eps)  # 1.19e-7
GEN_RTOL = 50 * EPS  # 6.0e-6 ≈ √2560·EPS: rounding walk of the patch convolution's 2560-term sums; measured 8.9e-7
MLP_RTOL = 32 * EPS  # 3.8e-6 = γ₃₂, the bound of a 32-term dot product (MLP width); measured 1.3e-7
SAMPLE_RTOL = 4 * EPS  # 4.8e-7: a bilinear tap is 4 products and a sum; measured 0
RAY_RTOL = 4 * EPS  # 4.8e-7: a few elementwise operations (normalise, cross product, slab division); measured < 1 EPS
RENDER_ATOL = 32 * EPS  # 3.8e-6 ≈ √256·2·EPS: 256 samples whose weights each carry 1 − exp(−τ)'s absolute error
LOSS_RTOL = MLP_RTOL + 21 * EPS  # 6.3e-6: colour error + a pairwise mean of 1.6 M terms (log₂ n = 21); meas. 6.4e-8
CODE_ATOL = 5e-5  # ≈ 3× |float32 − float64| of this refinement (1.7e-5, ours and the official's alike); meas. 1.3e-6


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE)


def _weights(ref, prefix):
    return {k[len(prefix) :]: v for k, v in ref.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def field(ref) -> GTRField:
    f = GTRField(SMALL.decoder)
    f.load_state_dict(_weights(ref, "pipeline.field."), strict=True)
    return f


def _close(actual, expected, rtol=0.0, atol=0.0):
    """``max |actual − expected| ≤ atol + rtol · max |expected|`` (0, 0: bit-exact)."""
    actual = torch.as_tensor(actual, dtype=torch.float32)
    assert actual.shape == expected.shape
    err = float((actual - expected).abs().max())
    tol = atol + rtol * float(expected.abs().max())
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


def _weights_file(ref, tmp_path) -> Path:
    """The fixture's model written the way the product stores weights (the project's safetensors file)."""
    weights = Weights(generator=_weights(ref, "pipeline.generator."), field=_weights(ref, "pipeline.field."),
                      config=SMALL, source="parity fixture")
    return save_weights(weights, tmp_path / "parity_small_model.safetensors")


def test_generator_input_from_png_and_cam_files(ref, tmp_path):
    """Real files through the project's GTR-folder loader → the exact official generator input."""
    rgba = ref["input.rgba_uint8"].numpy()
    w2c = ref["input.cam_file_w2c"].numpy()
    fx, fy, cx, cy = ref["input.cond_intrinsics"][0, 0].tolist()
    for i in range(rgba.shape[0]):
        Image.fromarray(rgba[i], "RGBA").save(tmp_path / f"rgb_{i:03d}.png")
        rows = "\n".join(" ".join(f"{x:.6f}" for x in row) for row in w2c[i])
        (tmp_path / f"cam_{i:03d}.txt").write_text(f"extrinsic\n{rows}\n\nintrinsic\n{fx!r} {fy!r} {cx} {cy} 64 64\n")
    job = load_job(tmp_path)
    rgb = np.stack([truncate_8bit(composite_on_white(v.rgb, v.mask)) for v in job.views]).astype(np.float32) / 255
    mask = np.stack([v.mask for v in job.views])
    c2w, intrinsics = camera_tensors([v.camera for v in job.views])
    _close(rgb, ref["input.cond_imgs"][0], 0)
    _close(mask[..., None], ref["input.cond_masks"][0], 0)
    _close(c2w, ref["input.cond_poses"][0], RAY_RTOL)  # float64 inverse of 6-decimal text
    _close(intrinsics, ref["input.cond_intrinsics"][0], 0)
    x = generator_input(torch.from_numpy(rgb), torch.from_numpy(mask), c2w, intrinsics)
    _close(x, ref["input.cond_input"], RAY_RTOL)


def official_image(rgba: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA uint8 image as the official loader prepares it: the white composite truncated to 8 bits, resized
    with PIL's bicubic filter; alpha bytes resized the same way. Float32 in [0, 1]."""
    pixels = rgba.astype(np.float32) / 255.0
    rgb8 = truncate_8bit(composite_on_white(pixels[..., :3], pixels[..., 3]))
    a8 = truncate_8bit(pixels[..., 3])
    if rgb8.shape[:2] != (size, size):
        rgb8 = np.asarray(Image.fromarray(rgb8).resize((size, size), Image.BICUBIC))
        a8 = np.asarray(Image.fromarray(a8).resize((size, size), Image.BICUBIC))
    return rgb8.astype(np.float32) / 255.0, a8.astype(np.float32) / 255.0


def test_official_image_matches_loader(ref):
    rgb, alpha = official_image(ref["input.rgba_uint8"][0].numpy(), 64)
    _close(rgb, ref["input.cond_imgs"][0, 0], 0)
    _close(alpha[..., None], ref["input.cond_masks"][0, 0], 0)
    # Upsampled to 512 the way the refinement fixture's targets were made (PIL bicubic of the composite).
    big, _ = official_image(ref["input.rgba_uint8"][1].numpy(), 512)
    _close(big, ref["refine.target_imgs"][1], 0)


def test_generator(ref):
    gen = Generator(SMALL.generator)
    gen.load_state_dict(_weights(ref, "pipeline.generator."), strict=True)
    x = ref["input.cond_input"]
    with torch.no_grad():
        tokens = gen.image_tokens(x)
        _close(tokens, ref["gen.img_tokens_after_norm1"], GEN_RTOL)
        seq = torch.cat([gen.plane_tokens(1), tokens], dim=1)
        _close(gen.attn_layers[0](seq), ref["gen.tokens_after_block0"], GEN_RTOL)
        triplanes = gen(x)
    _close(triplanes, ref["gen.triplanes"], GEN_RTOL)


def test_point_decoding(ref, field):
    tf = field.on(ref["gen.triplanes"][0])
    pts = ref["pts.xyz"]
    with torch.no_grad():
        _close(tf.features(pts), ref["pts.features"], SAMPLE_RTOL)
        sigma, rgb = tf(pts)
    _close(sigma[:, None], ref["pts.sigma"], MLP_RTOL)
    _close(rgb, ref["pts.rgb"], MLP_RTOL)


def test_volume_rendering(ref, field):
    tf = field.on(ref["gen.triplanes"][0])
    origins, dirs = pixel_rays(ref["render.c2w"][None], ref["render.intrinsics"][None], 16, 16)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    _close(origins, ref["render.rays_o"], RAY_RTOL)
    _close(dirs, ref["render.rays_d"], RAY_RTOL)
    near, far, valid = near_far(origins, dirs)
    assert int(valid.sum()) == 158
    assert torch.equal(valid.to(torch.uint8), ref["render.ray_valid"])
    hit = valid[:, 0]  # misses are exactly 1e10 (compared exactly)
    assert torch.equal(near[~hit], ref["render.near_raw"][~hit]) and torch.equal(far[~hit], ref["render.far_raw"][~hit])
    _close(near[hit], ref["render.near_raw"][hit], RAY_RTOL)
    _close(far[hit], ref["render.far_raw"][hit], RAY_RTOL)
    with torch.no_grad():
        out = render_rays_dense(tf, origins, dirs, samples=256, min_near=0.2)
    # w = (1 − exp(−τ))·T is computed next to 1, where float32's spacing is EPS: absolute error, measured 6.0e-8.
    _close(out.weights, ref["render.weights"], MLP_RTOL, 2 * EPS)
    _close(out.rgb, ref["render.rgb"], atol=RENDER_ATOL)  # measured 4.2e-7
    _close(out.opacity, ref["render.opacity"], atol=RENDER_ATOL)
    # The median bin is the first whose cumulative weight reaches 0.5; no ray of the fixture passes within
    # RENDER_ATOL of 0.5 (closest: 1.4e-5), so the bin is the same on every machine and only t varies.
    cum = torch.cumsum(ref["render.weights"], -1)
    assert float((cum - 0.5).abs().min()) > RENDER_ATOL
    _close(out.depth_median(), ref["render.depth_median"], RAY_RTOL)
    _close(out.depth_expected(), ref["render.depth_expected"], RENDER_ATOL)  # relative; measured 2.2e-7


def test_mesh_extraction(ref, field):
    tf = field.on(ref["gen.triplanes"][0])
    level = float(ref["mesh.level"][0])
    _close(grid_points(32), ref["mesh.grid_pts"], 0)
    grid = density_grid(tf, 32)
    _close(grid, ref["mesh.density_grid"], MLP_RTOL)  # measured 1.3e-7
    # Marching cubes is elementwise arithmetic on its grid: from the official grid, bit-exact (values and order).
    ref_verts, _ = extract_mesh(ref["mesh.density_grid"], level)
    _close(ref_verts, ref["mesh.verts_raw"], 0)
    _close(ref_verts.min(0).values, ref["mesh.bbox"][0], 0)
    _close(ref_verts.max(0).values, ref["mesh.bbox"][1], 0)
    # From our grid, a vertex at t = (level − σ0)/(σ1 − σ0) on an edge of length h moves by at most
    # h·δσ/|σ1 − σ0| when σ moves by δσ: the error is conditioned by the edge's density step (8.1e-6 was seen on
    # an edge with a small step), so each vertex gets its own bound.
    verts, faces = extract_mesh(grid, level)
    assert verts.shape == ref["mesh.verts_raw"].shape
    delta_sigma = MLP_RTOL * float(ref["mesh.density_grid"].abs().max())
    bound = _vertex_bounds(ref["mesh.verts_raw"], ref["mesh.density_grid"], level, delta_sigma) + 4 * EPS
    err = (verts - ref["mesh.verts_raw"]).abs().amax(-1)
    assert bool((err <= bound).all()), f"worst vertex error {float((err / bound).max()):.3g}× its bound"
    # Colours are truncated to bytes: exact unless 255·rgb lies within the colour tolerance of an integer.
    ours = vertex_colors_uint8(tf, verts).astype(int)
    expected = ref["mesh.vertex_colors_uint8"].numpy().astype(int)
    with torch.no_grad():
        scaled = (tf.color(verts).clamp(0, 1) * 255).numpy()
    near_step = np.abs(scaled - np.round(scaled)) <= 255 * MLP_RTOL
    differ = ours[:, :3] != expected[:, :3]
    assert not (differ & ~near_step).any() and np.abs(ours - expected).max() <= 1
    assert np.array_equal(ours[:, 3], expected[:, 3])
    # Our case table is our own: same surface topology as diso's (faces, components, closed, outward), but the
    # diagonal splitting quads into triangles may differ, so the triangles themselves are not compared.
    assert faces.shape == ref["mesh.faces_raw"].shape
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed = set(map(tuple, edges.tolist()))
    assert len(directed) == edges.shape[0]  # no directed edge twice: consistently wound
    assert all((b, a) in directed for a, b in directed)  # every edge has its twin: watertight
    tri = verts[faces].double()
    volume = float(torch.einsum("ij,ij->i", tri[:, 0], torch.cross(tri[:, 1], tri[:, 2], dim=-1)).sum() / 6)
    assert 0.045 < volume < 0.056  # reference +0.0519: positive = outward winding
    assert _components(faces, verts.shape[0]) == 384


def _vertex_bounds(verts: torch.Tensor, density: torch.Tensor, level: float, delta_sigma: float) -> torch.Tensor:
    """Per vertex, h·δσ/|σ1 − σ0| for the grid edge it lies on (first-order sensitivity of the interpolation)."""
    N = density.shape[0]
    padded = torch.nn.functional.pad(density.double(), (1, 1, 1, 1, 1, 1), value=level - 1.0)  # s = +1 outside
    index = (verts.double() + 1) / 2 * (N - 1) + 1  # padded-lattice units
    axis = (index - index.round()).abs().argmax(-1)  # the one non-integer coordinate
    start = index.round().long()
    start[torch.arange(len(verts)), axis] = index[torch.arange(len(verts)), axis].floor().long()
    end = start.clone()
    end[torch.arange(len(verts)), axis] += 1
    s0 = padded[start[:, 0], start[:, 1], start[:, 2]]
    s1 = padded[end[:, 0], end[:, 1], end[:, 2]]
    h = 2.0 / (N - 1)
    return (h * delta_sigma / (s1 - s0).abs()).float()


def _components(faces: torch.Tensor, n: int) -> int:
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, c in faces.tolist():
        parent[find(a)] = find(b)
        parent[find(b)] = find(c)
    return len({find(v) for v in faces.flatten().tolist()})


def test_refinement_three_iterations(ref, tmp_path):
    """Through the product's path: weights file → read_checkpoint → build_model (frozen, eval) → field.on → refine."""
    generator, gtr_field = build_model(read_checkpoint(_weights_file(ref, tmp_path)))
    tf = gtr_field.on(ref["refine.code_before"][0].clone())
    sigma_before = {k: v.clone() for k, v in tf.mlp_sigma.state_dict().items()}
    generator_before = {k: v.clone() for k, v in generator.state_dict().items()}
    settings = GTRRefineConfig(iterations=3)
    trace = refine_texture_gtr(tf, ref["refine.tex_pts"], ref["refine.mask"], ref["refine.target_imgs"], settings)
    _close(torch.tensor(trace.losses), ref["refine.losses"], LOSS_RTOL)
    # The optimiser's own group lrs at each step. Fixture columns: field decay / no decay, generator decay /
    # no decay (the official scheduler's generator groups follow the same schedule; the generator is not refined,
    # so it has no group here), triplane.
    assert len(trace.lrs) == ref["refine.lrs"].shape[0]
    for step, row in zip(trace.lrs, ref["refine.lrs"].tolist()):
        assert step.mlp_decay == pytest.approx(row[0], rel=1e-6, abs=1e-12)
        assert step.mlp_no_decay == pytest.approx(row[1], rel=1e-6, abs=1e-12)
        assert step.mlp_decay == pytest.approx(row[2], rel=1e-6, abs=1e-12)
        assert step.mlp_no_decay == pytest.approx(row[3], rel=1e-6, abs=1e-12)
        assert step.triplane == row[4]
    after = tf.planes.detach()
    # Texels outside every sample's bilinear footprint get no gradient: Adam's step is 0/(0+ε) = 0 and decoupled
    # weight decay multiplies by (1 − lr·wd), elementwise and correctly rounded, hence bit-exact everywhere.
    untouched = _untouched_texels(ref["refine.code_before"][0], ref["refine.tex_pts"], ref["refine.mask"])
    assert int(untouched.sum()) == 15168  # of 24576
    assert torch.equal(after[untouched], ref["refine.code_after"][0][untouched])
    # Texels with a gradient: Adam's step lr·g/(|g| + ε) is most sensitive where |g| ≈ ε = 1e-8 (the worst texels
    # here), so summation-order differences in the gradient show up amplified; see CODE_ATOL.
    _close(after, ref["refine.code_after"][0], atol=CODE_ATOL)
    for key, value in tf.mlp_color.state_dict().items():
        _close(value, ref[f"refine.field_after.decoder.field.mlp_color.{key}"], MLP_RTOL)  # measured 4.9e-8 rel.
    for key, value in tf.mlp_sigma.state_dict().items():
        assert torch.equal(value, sigma_before[key])
    for key, value in generator.state_dict().items():
        assert torch.equal(value, generator_before[key])
    # requires_grad is restored: the loaded model is frozen again, and the refined triplane is a plain tensor.
    assert not any(p.requires_grad for p in gtr_field.parameters()) and not tf.planes.requires_grad


def _untouched_texels(planes: torch.Tensor, tex_pts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    planes = planes.clone().requires_grad_(True)
    sample_planes(planes, tex_pts[mask[..., 0] > 0.5]).sum().backward()
    return planes.grad == 0


@pytest.mark.gpu
def test_parity_on_cuda(ref):
    """The same fixtures on CUDA in strict float32 (TF32 off), at the CPU tolerances."""
    from backend.gtr.precision import float32_precision

    cuda = torch.device("cuda")
    with float32_precision("highest"):
        gen = Generator(SMALL.generator).to(cuda)
        gen.load_state_dict(_weights(ref, "pipeline.generator."), strict=True)
        with torch.no_grad():
            _close(gen(ref["input.cond_input"].to(cuda)).cpu(), ref["gen.triplanes"], GEN_RTOL)
        field = GTRField(SMALL.decoder).to(cuda)
        field.load_state_dict(_weights(ref, "pipeline.field."), strict=True)
        tf = field.on(ref["gen.triplanes"][0].to(cuda))
        grid = density_grid(tf, 32)
        _close(grid.cpu(), ref["mesh.density_grid"], MLP_RTOL)
        verts, _ = extract_mesh(grid, float(ref["mesh.level"][0]))
        bound = _vertex_bounds(ref["mesh.verts_raw"], ref["mesh.density_grid"], float(ref["mesh.level"][0]),
                               MLP_RTOL * float(ref["mesh.density_grid"].abs().max())) + 4 * EPS
        assert bool(((verts.cpu() - ref["mesh.verts_raw"]).abs().amax(-1) <= bound).all())
        tf = field.on(ref["refine.code_before"][0].clone().to(cuda))
        refine_texture_gtr(tf, ref["refine.tex_pts"].to(cuda), ref["refine.mask"].to(cuda),
                           ref["refine.target_imgs"].to(cuda), GTRRefineConfig(iterations=3))
        _close(tf.planes.detach().cpu(), ref["refine.code_after"][0], atol=CODE_ATOL)


def test_gtr_method_input_preparation_matches_official(ref):
    """Square, centred views pass through the gtr method's preparation (square_view + model_inputs) unchanged:
    the generator input is the official one."""
    from backend.cameras import Camera
    from backend.gtr.rig import square_view
    from backend.gtr.run import model_inputs
    from backend.views import View

    rgba = ref["input.rgba_uint8"].numpy()
    w2c = ref["input.cam_file_w2c"].numpy().astype(np.float64)
    fx, fy, cx, cy = ref["input.cond_intrinsics"][0, 0].tolist()
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    views = [
        View(f"v{i}", Camera(w2c[i], K, 64, 64), rgba[i, ..., :3] / np.float32(255), rgba[i, ..., 3] / np.float32(255))
        for i in range(rgba.shape[0])
    ]
    rgb, alpha, x = model_inputs([square_view(v, 64) for v in views])
    _close(rgb, ref["input.cond_imgs"][0], 0)
    _close(alpha, ref["input.cond_masks"][0, ..., 0], 0)
    _close(x, ref["input.cond_input"], RAY_RTOL)
