"""Benchmark the GTR network stages with random weights: generator, mesh extraction, texture refinement.

    python benchmarks/bench_gtr.py --device cuda                       # the issue's setting: full model, 6 × 512²
    python benchmarks/bench_gtr.py --device cpu --config small         # seconds: checks the plumbing
    python benchmarks/bench_gtr.py --device cuda --precision           # + TF32 / bf16 effect on the triplanes

Inputs are the official six-view rig looking at a coloured sphere (random weights do not care what they see).
Random weights rarely reach the official iso-level, so when the level-10 mesh is empty the 97th percentile of the
density grid is used instead (reported). Each stage is timed after one warm-up run on CUDA (synchronised) and peak
memory is ``torch.cuda.max_memory_allocated`` (CUDA) or the process's peak RSS (CPU). Prints a markdown table and
writes ``results.json`` to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.field import density_grid  # noqa: E402
from backend.gtr.config import FULL, SMALL  # noqa: E402
from backend.gtr.decoder import GTRField  # noqa: E402
from backend.gtr.generator import Generator  # noqa: E402
from backend.gtr.geometry import extract_mesh  # noqa: E402
from backend.gtr.rays import camera_tensors, generator_input, pixel_rays  # noqa: E402
from backend.gtr.rig import official_rig_cameras  # noqa: E402
from backend.mesh import Mesh  # noqa: E402
from backend.refine import GTRRefineConfig, refine_texture_gtr, surface_images  # noqa: E402


def sphere_views(size: int, views: int, radius: float = 0.7):
    """RGB on white (V, H, W, 3), alpha (V, H, W) and cameras of a colour-gradient sphere seen by the rig."""
    cams = (official_rig_cameras(size) * ((views + 5) // 6))[:views]
    origins, dirs = pixel_rays(*camera_tensors(cams), size, size)
    b = (dirs * origins).sum(-1)
    disc = b**2 - ((origins * origins).sum(-1) - radius**2)
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    colour = (0.5 + 0.5 * (origins + dirs * t[..., None]) / radius).clamp(0, 1)
    return torch.where(hit[..., None], colour, torch.ones_like(colour)), hit.float(), cams


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, device: torch.device, warmup: bool):
    if warmup and device.type == "cuda":
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start, peak_memory_mb(device)


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def precision_rows(generator, x, field, reference, level, device) -> list[dict]:
    """Triplane and density-grid differences of TF32 / bf16 runs against strict float32."""
    rows = []
    variants = [("tf32", lambda: _with_tf32(generator, x))] if device.type == "cuda" else []
    variants.append(("bf16 autocast", lambda: _with_bf16(generator, x, device)))
    ref_grid = density_grid(field.on(reference[0]), 128)
    ref_inside = ref_grid > level
    for name, fn in variants:
        with torch.no_grad():
            out = fn().float()
        err = (out - reference).abs()
        grid = density_grid(field.on(out[0]), 128)
        flips = float(((grid > level) != ref_inside).float().mean())
        rows.append({
            "variant": name,
            "triplane_max_abs": float(err.max()),
            "triplane_rel_rms": float(err.square().mean().sqrt() / reference.square().mean().sqrt()),
            "density_grid_max_abs": float((grid - ref_grid).abs().max()),
            "inside_flips_128": flips,
        })
    return rows


def _with_tf32(generator, x):
    set_tf32(True)
    try:
        with torch.no_grad():
            return generator(x)
    finally:
        set_tf32(False)


def _with_bf16(generator, x, device):
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        return generator(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=["full", "small"], default="full")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--mesh-resolution", type=int, default=None, help="default: the model's (256)")
    ap.add_argument("--raster", type=int, default=1024, help="refinement raster side (official 1024)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--precision", action="store_true", help="also measure TF32 (CUDA) and bf16 on the triplanes")
    ap.add_argument("--output", default="bench_out/gtr")
    args = ap.parse_args()

    device = torch.device(args.device)
    set_tf32(False)  # strict float32 unless a row says otherwise
    torch.manual_seed(0)
    model = FULL if args.config == "full" else SMALL
    resolution = args.mesh_resolution or model.mesh_resolution
    generator = Generator(model.generator).to(device).eval().requires_grad_(False)
    field = GTRField(model.decoder).to(device).eval().requires_grad_(False)
    rgb, alpha, cams = sphere_views(args.size, args.views)
    c2w, intr = camera_tensors(cams)
    x = generator_input(rgb, alpha, c2w, intr).to(device)

    rows = []

    def generate():
        with torch.no_grad():
            return generator(x)

    triplanes, sec, mem = timed(generate, device, warmup=True)
    rows.append({"stage": f"generator ({args.views} × {args.size}²)", "seconds": sec, "peak_mb": mem})

    tri_field = field.on(triplanes[0].clone())
    grid, sec_grid, mem = timed(lambda: density_grid(tri_field, resolution), device, warmup=True)
    level = model.mesh_level
    (verts, faces), sec_mc, mem_mc = timed(lambda: extract_mesh(grid, level), device, warmup=True)
    level_note = f"level {level:g}"
    if faces.shape[0] == 0:
        level = float(torch.quantile(grid.flatten()[:: max(1, grid.numel() // 1_000_000)], 0.97))
        (verts, faces), sec_mc, mem_mc = timed(lambda: extract_mesh(grid, level), device, warmup=True)
        level_note = f"level {level:.3g} (97th pct; 10 gave no surface)"
    rows.append({"stage": f"density grid {resolution}³", "seconds": sec_grid, "peak_mb": mem})
    rows.append({"stage": f"marching cubes, {level_note}, {faces.shape[0]} faces", "seconds": sec_mc,
                 "peak_mb": mem_mc})

    settings = replace(GTRRefineConfig(), iterations=args.iters, raster_size=args.raster)

    def refine_once():
        f = field.on(triplanes[0].clone())
        pts, mask = surface_images(Mesh(verts, faces), cams, settings.raster_size)
        refine_texture_gtr(f, pts, mask, rgb.to(device), settings)

    _, sec, mem = timed(refine_once, device, warmup=True)
    rows.append({"stage": f"refinement {args.iters} it (raster {args.raster}², incl. rasterisation)", "seconds": sec,
                 "peak_mb": mem})

    precision = precision_rows(generator, x, field, triplanes, level, device) if args.precision else []

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"\nGTR {args.config}, {args.device} ({gpu}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| stage | seconds | peak memory (MB) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.3f} | {r['peak_mb']:.0f} |")
    if precision:
        print("\n| variant vs float32 | triplane max abs | triplane rel. RMS | σ-grid max abs | inside flips (128³) |")
        print("|---|---:|---:|---:|---:|")
        for p in precision:
            print(f"| {p['variant']} | {p['triplane_max_abs']:.3g} | {p['triplane_rel_rms']:.3g} | "
                  f"{p['density_grid_max_abs']:.3g} | {p['inside_flips_128']:.2e} |")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({
        "config": args.config, "device": args.device, "gpu": gpu, "torch": torch.__version__,
        "views": args.views, "size": args.size, "rows": rows, "precision": precision,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
