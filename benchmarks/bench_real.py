"""Benchmark real photographs: ``ethiopian_head`` reconstructed with and without its masks as input.

    python benchmarks/bench_real.py --output bench_out/real [--data ../shared/data/real/ethiopian_head]
                                    [--runs masks,none] [--preset draft]

Every 8th photo is held out (9 test views, 57 training views). Each run writes a ``job.json`` of the training
views and reconstructs it in a fresh subprocess (wall time, peak RSS):
- ``masks``: the provided masks as input (bounds from their visual hull);
- ``none``: ``mask_source: none`` with job bounds = the masks' visual-hull box grown 1.3× (what a user would draw
  around the object); the masks only score.
Scores on the held-out views: silhouette IoU of the mesh against the masks, PSNR inside the masks (mesh rendered
over the photo's own pixels outside them), and ``outside`` = the fraction of the mesh's area that projects outside
the (3 px dilated) mask of some view, over all 66 views (the stand, the table, background pieces, and any band a few
pixels too fat in some view), with ``largest outside piece`` the largest connected part of that area (faces joined
through shared vertices). For ``none`` also the IoU of the derived masks (``out/masks/``) against the true masks of
the training views. Prints a markdown table and writes ``results.json``. Without the data folder it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

common = importlib.import_module("bench_demo")  # the shared helpers (this folder is not a package)
fmt = common.fmt

DEFAULT_DATA = common.REPO_ROOT.parent / "shared" / "data" / "real" / "ethiopian_head"
HOLD_OUT_EVERY = 8
BOUNDS_GROWTH = 1.3


def view_entry(view, image: Path, mask: Path | None) -> dict:
    cam = view.camera
    entry = {"image": str(image), "name": view.name, "world_to_camera": cam.world_to_camera.tolist(),
             "K": cam.K.tolist(), "width": cam.width, "height": cam.height}  # fmt: skip
    if mask is not None:
        entry["mask"] = str(mask)
    return entry


def image_path(folder: Path, name: str) -> Path:
    return next(p for p in sorted(folder.iterdir()) if p.stem == name)


def score(mesh_file: Path, test_views, all_views) -> dict:
    from backend.mesh import Mesh
    from backend.mesh_render import coverage, render_mesh

    data = np.load(mesh_file, allow_pickle=False)
    colours = torch.as_tensor(data["vertex_colors"][:, :3] / 255.0, dtype=torch.float32)
    mesh = Mesh(torch.as_tensor(data["positions"]), torch.as_tensor(data["triangles"]).long(), colours)
    ious, psnrs = [], []
    for view in test_views:
        truth = torch.as_tensor(view.mask) > 0.5
        pred = coverage(mesh, view.camera) > 0.5
        ious.append(float((truth & pred).sum() / (truth | pred).sum()))
        render = render_mesh(mesh, view.camera, background=(1.0, 1.0, 1.0), supersample=2)
        err = (render - torch.as_tensor(view.rgb)).square().mean(-1)[truth]
        psnrs.append(float(-10 * torch.log10(err.mean())))
    # area outside the masks: a face is outside when its centre projects outside some view's dilated mask
    v, f = mesh.vertices.double(), mesh.faces
    centres = v[f].mean(1)
    areas = 0.5 * torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]).norm(dim=1)
    outside = torch.zeros(len(f), dtype=torch.bool)
    for view in all_views:
        cam = view.camera
        m = torch.as_tensor(view.mask)[None, None] > 0.5
        dilated = F.max_pool2d(m.float(), 7, stride=1, padding=3)[0, 0] > 0
        p = centres @ torch.as_tensor(cam.world_to_camera[:3, :3]).T + torch.as_tensor(cam.world_to_camera[:3, 3])
        uv = p[:, :2] / p[:, 2:3] @ torch.as_tensor(cam.K[:2, :2]).T + torch.as_tensor(cam.K[:2, 2])
        col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (col >= 0) & (row >= 0) & (col < cam.width) & (row < cam.height) & (p[:, 2] > 0)
        hit = torch.zeros(len(f), dtype=torch.bool)
        hit[inside] = dilated[row[inside], col[inside]]
        outside |= inside & ~hit
    return {
        "largest_outside_piece": round(largest_piece(f[outside].numpy(), areas[outside].numpy(), len(v)) / float(
            areas.sum()), 4),  # fmt: skip
        "iou": round(float(np.mean(ious)), 4),
        "iou_min": round(float(np.min(ious)), 4),
        "psnr_in_mask": round(float(np.mean(psnrs)), 3),
        "outside_area": round(float(areas[outside].sum() / areas.sum()), 4),
        "faces": int(len(f)),
    }


def largest_piece(faces: np.ndarray, areas: np.ndarray, vertex_count: int) -> float:
    """Area of the largest set of ``faces`` connected through shared vertices."""
    from backend.extract import components

    if len(faces) == 0:
        return 0.0
    return float(np.bincount(components(faces, vertex_count), weights=areas).max())


def derived_mask_iou(folder: Path, train) -> float | None:
    """Mean IoU of the masks the pipeline derived (``folder``/NAME.png) against the true masks."""
    from PIL import Image

    if not folder.is_dir():
        return None
    ious = []
    for view in train:
        derived = np.asarray(Image.open(folder / f"{view.name}.png").convert("L")) > 127
        truth = view.mask > 0.5
        ious.append(float((derived & truth).sum() / (derived | truth).sum()))
    return round(float(np.mean(ious)), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the ethiopian_head folder")
    parser.add_argument("--output", "-o", default="bench_out/real", help="results folder")
    parser.add_argument("--runs", default="masks,none", help="comma-separated: masks, none")
    parser.add_argument("--preset", choices=["draft", "standard", "high"], default="draft")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: dataset folder {data} not found (pass --data)", file=sys.stderr)
        return 0
    from backend.inputs import load_job
    from backend.normalise import NormaliseConfig, bounds_from_masks

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    views = load_job(data).views  # with the masks, for scoring
    test = [v for n, v in enumerate(views) if n % HOLD_OUT_EVERY == 0]
    train = [v for n, v in enumerate(views) if n % HOLD_OUT_EVERY != 0]
    box = bounds_from_masks(train, NormaliseConfig(), torch.device("cpu"))
    results = []
    for run in args.runs.split(","):
        use_masks = run == "masks"
        job = {
            "version": 1,
            "views": [
                view_entry(v, image_path(data / "images", v.name),
                           image_path(data / "masks", v.name) if use_masks else None)
                for v in train
            ],  # fmt: skip
            "options": {"preset": args.preset, "mask_source": "file" if use_masks else "none"},
        }
        if not use_masks:
            job["bounds"] = {"centre": box.centre.tolist(), "size": (box.size * BOUNDS_GROWTH).tolist()}
        job_file = out / run / "job.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(job, indent=1))
        command = [sys.executable, "-m", "backend", "reconstruct", str(job_file), "--output", str(out / run / "out"),
                   "--quiet"]  # fmt: skip
        measured = common.run_measured(command, out / f"{run}.log", args.timeout)
        row = {"run": run, **measured}
        if measured["exit_code"] == 0:
            row.update(score(out / run / "out" / "mesh.npz", test, views))
            metrics = json.loads((out / run / "out" / "metrics.json").read_text())
            row["timings"] = metrics.get("timings")
            row["warnings"] = metrics.get("warnings")
            row["derived_mask_iou"] = derived_mask_iou(out / run / "out" / "masks", train)
        results.append(row)
        print(json.dumps(row), flush=True)
    header = ["run", "IoU (mean / min)", "PSNR in masks", "outside area", "largest outside piece",
              "derived-mask IoU", "faces", "wall s", "peak MB"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        cells = [r["run"], f"{fmt(r.get('iou'), 3)} / {fmt(r.get('iou_min'), 3)}", fmt(r.get("psnr_in_mask")),
                 fmt(r.get("outside_area"), 3), fmt(r.get("largest_outside_piece"), 3),
                 fmt(r.get("derived_mask_iou"), 3), r.get("faces", "—"), fmt(r["wall_s"]),
                 fmt(r["peak_mb"])]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    machine = common.machine_info("cpu") if hasattr(common, "machine_info") else {}
    doc = {"benchmark": "real", "data": str(data), "preset": args.preset, "machine": machine, "runs": results}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
