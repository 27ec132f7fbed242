"""Benchmark photos without masks on a Blender-rendered hard case: an object on a table among other objects in a
furnished room, photographed through a distorting lens, its poses in a transforms.json.

    python benchmarks/bench_backdrop.py --output bench_out/backdrop [--mesh ../shared/data/meshes/spot/...obj]
                                        [--runs masks,none,bounds] [--preset draft] [--rerender]

1. :mod:`render_backdrop` renders the scene with Blender (the ``bpy`` module of this environment, in a
   subprocess; reused from ``OUTPUT/scene`` when there): pinhole photos, the object's true masks, cameras and the
   object's mesh.
2. The photos and masks are taken "through" an OpenCV lens (:data:`LENS`, :func:`backend.synthetic.through_lens`)
   and written as a nerfstudio-style dataset, every 6th view held out: ``transforms_masks.json`` (with
   ``mask_path``) and ``transforms_none.json`` (photos only).
3. Runs: ``masks`` (the true masks as input), ``none`` (photos only and no bounds: the pipeline estimates them
   from the cameras) and ``bounds`` (photos only, ``--bounds`` = the object's box grown 1.3×, what a user
   would draw). Each run reconstructs its transforms file in a fresh subprocess (wall time, peak RSS) and is
   scored against the object's mesh (Chamfer-L1 and F-score at 1 % of its diagonal; ``backdrop`` = the share of
   the mesh's area farther than 3 % of the diagonal from the object: table, clutter, walls) and on the held-out
   views (silhouette IoU of the mesh against the true pinhole masks).
Prints a markdown table and writes ``results.json``. Without ``bpy`` or the mesh file it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

common = importlib.import_module("bench_demo")  # the shared helpers (this folder is not a package)
fmt = common.fmt

DEFAULT_MESH = common.REPO_ROOT.parent / "shared" / "data" / "meshes" / "spot" / "spot_triangulated.obj"
LENS = {"camera_model": "OPENCV", "k1": -0.25, "k2": 0.08, "p1": 0.001, "p2": -0.0015}
"""A wide phone lens' barrel distortion: a pixel in the corners of the 320 × 240 photos moves by about 18 px."""
HOLD_OUT_EVERY = 6
BOUNDS_GROWTH = 1.3
BACKDROP_DISTANCE = 0.03
"""Mesh area farther than this fraction of the object's diagonal from the object counts as backdrop."""


def render_scene(mesh: Path, scene: Path, rerender: bool, timeout: float | None) -> bool:
    if (scene / "cameras.json").is_file() and not rerender:
        return True
    command = [sys.executable, str(Path(__file__).with_name("render_backdrop.py")), "--mesh", str(mesh),
               "--output", str(scene)]  # fmt: skip
    measured = common.run_measured(command, scene.parent / "render.log", timeout)
    print(f"rendered the scene in {measured['wall_s']:.0f} s (exit {measured['exit_code']})", flush=True)
    return measured["exit_code"] == 0


def write_dataset(scene: Path, dataset: Path) -> tuple[list[dict], list[dict]]:
    """The photos and masks through :data:`LENS` plus the two transforms files; returns (train, test) views."""
    from PIL import Image

    from backend.cameras import w2c_to_opengl_c2w
    from backend.synthetic import through_lens

    views = json.loads((scene / "cameras.json").read_text())["views"]
    for folder in ("images", "masks"):
        (dataset / folder).mkdir(parents=True, exist_ok=True)
    K = np.array(views[0]["K"])
    for view in views:
        name = f"{view['name']}.png"
        for folder, source in (("images", "photos"), ("masks", "masks")):
            image = np.asarray(Image.open(scene / source / name))
            Image.fromarray(through_lens(image, K, LENS)).save(dataset / folder / name)
    test = [v for n, v in enumerate(views) if n % HOLD_OUT_EVERY == 0]
    train = [v for n, v in enumerate(views) if n % HOLD_OUT_EVERY != 0]
    lens = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": views[0]["width"],
            "h": views[0]["height"], **LENS}  # fmt: skip
    for run, with_masks in (("masks", True), ("none", False)):
        frames = []
        for view in train:
            frame = {"file_path": f"images/{view['name']}.png",
                     "transform_matrix": w2c_to_opengl_c2w(np.array(view["world_to_camera"])).tolist()}  # fmt: skip
            if with_masks:
                frame["mask_path"] = f"masks/{view['name']}.png"
            frames.append(frame)
        (dataset / f"transforms_{run}.json").write_text(json.dumps({**lens, "frames": frames}, indent=1))
    return train, test


def user_bounds(scene: Path) -> list[float]:
    """The object's axis-aligned box grown :data:`BOUNDS_GROWTH`× about its centre: min then max corner."""
    vertices = np.load(scene / "object.npz")["vertices"]
    low, high = vertices.min(0), vertices.max(0)
    centre, half = (low + high) / 2, (high - low) / 2 * BOUNDS_GROWTH
    return [*(centre - half).tolist(), *(centre + half).tolist()]


def score(mesh_file: Path, scene: Path, test: list[dict]) -> dict:
    from PIL import Image

    from backend.cameras import Camera
    from backend.mesh import Mesh
    from backend.mesh_render import coverage
    from backend.metrics import mesh_metrics, sample_surface

    data = np.load(mesh_file, allow_pickle=False)
    mesh = Mesh(torch.as_tensor(data["positions"]), torch.as_tensor(data["triangles"]).long())
    truth = np.load(scene / "object.npz")
    scores = mesh_metrics(mesh, truth["vertices"], truth["faces"])
    diagonal = scores["bbox_diagonal"]
    points, _ = sample_surface(mesh.vertices, mesh.faces, 100_000, seed=5)
    object_points, _ = sample_surface(truth["vertices"], truth["faces"], 200_000, seed=6)
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(object_points).query(points)
    ious = []
    for view in test:
        camera = Camera(np.array(view["world_to_camera"]), np.array(view["K"]), view["width"], view["height"])
        true_mask = np.asarray(Image.open(scene / "masks" / f"{view['name']}.png").convert("L")) > 127
        pred = coverage(mesh, camera).numpy() > 0.5
        ious.append(float((true_mask & pred).sum() / (true_mask | pred).sum()))
    return {
        "chamfer_l1": round(scores["chamfer_l1"], 5),
        "fscore": round(scores["fscore"], 4),
        "backdrop": round(float((distance > BACKDROP_DISTANCE * diagonal).mean()), 4),
        "iou": round(float(np.mean(ious)), 4),
        "iou_min": round(float(np.min(ious)), 4),
        "faces": int(len(mesh.faces)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", default=str(DEFAULT_MESH), help="the object's mesh (.obj, .glb, .ply)")
    parser.add_argument("--output", "-o", default="bench_out/backdrop", help="results folder")
    parser.add_argument("--runs", default="masks,none,bounds", help="comma-separated: masks, none, bounds")
    parser.add_argument("--preset", choices=["draft", "standard", "high"], default="draft")
    parser.add_argument("--rerender", action="store_true", help="render the scene again even if OUTPUT/scene has it")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    args = parser.parse_args(argv)
    mesh = Path(args.mesh)
    if not mesh.is_file():
        print(f"skipped: mesh {mesh} not found (pass --mesh)", file=sys.stderr)
        return 0
    if importlib.util.find_spec("bpy") is None:
        print("skipped: this environment has no bpy (python install.py --dev installs it)", file=sys.stderr)
        return 0
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not render_scene(mesh, out / "scene", args.rerender, args.timeout):
        print(f"rendering failed: see {out / 'render.log'}", file=sys.stderr)
        return 1
    train, test = write_dataset(out / "scene", out / "dataset")
    results = []
    for run in args.runs.split(","):
        transforms = out / "dataset" / f"transforms_{'masks' if run == 'masks' else 'none'}.json"
        command = [sys.executable, "-m", "backend", "reconstruct", str(transforms), "--output", str(out / run),
                   "--preset", args.preset, "--quiet"]  # fmt: skip
        if run == "bounds":
            command += ["--bounds", *(str(x) for x in user_bounds(out / "scene"))]
        measured = common.run_measured(command, out / f"{run}.log", args.timeout)
        row = {"run": run, **measured}
        if measured["exit_code"] == 0:
            row.update(score(out / run / "mesh.npz", out / "scene", test))
            metrics = json.loads((out / run / "metrics.json").read_text())
            row["timings"] = metrics.get("timings")
            row["warnings"] = metrics.get("warnings")
        results.append(row)
        print(json.dumps(row), flush=True)
    header = ["run", "Chamfer-L1", "F-score", "backdrop", "IoU (mean / min)", "faces", "wall s", "peak MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        cells = [r["run"], fmt(r.get("chamfer_l1"), 4), fmt(r.get("fscore"), 3), fmt(r.get("backdrop"), 3),
                 f"{fmt(r.get('iou'), 3)} / {fmt(r.get('iou_min'), 3)}", r.get("faces", "—"), fmt(r["wall_s"]),
                 fmt(r["peak_mb"])]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    doc = {"benchmark": "backdrop", "mesh": str(mesh), "lens": LENS, "preset": args.preset,
           "machine": common.machine_info("cpu"), "runs": results}  # fmt: skip
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
