"""Benchmark the add-on's mesh importer against ``bpy.ops.import_scene.gltf`` on the same mesh, in one bpy process.

    python benchmarks/bench_import.py [--output bench_out/import] [--repeat 5]
    python benchmarks/bench_import.py --smoke        # a tiny mesh, 2 runs: checks the plumbing only

The mesh is a displaced torus (deterministic): 200 000 vertices / 400 000 triangles, written by the backend's
exporter (``backend.export.export_mesh``) twice, (a) with vertex colours and (b) with per-corner UVs + a 1024²
texture, each as the ``.npz`` the add-on reads and as a GLB. Each run starts from an empty scene and times
(1) the add-on's path, ``read_mesh_npz`` (read and check the file with its edges: in the add-on this runs in a
worker thread) + ``update_object`` (mesh, material, packed image, object: Blender's main thread), and
(2) ``bpy.ops.import_scene.gltf`` of the GLB; "+ eval" adds the ``view_layer.update()`` that follows, so both
end with the object evaluated in the scene. Runs alternate between the two; the table shows medians. A 1M-triangle
torus is timed with the importer alone (target ≤ 0.5 s). Targets: importer ≥ 3× faster than ``import_scene.gltf``.
Prints a markdown table; writes ``results.json`` to ``--output`` if given.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
common = importlib.import_module("bench_demo")  # the shared helpers (this folder is not a package)
fmt = common.fmt
sys.path.insert(0, str(common.REPO_ROOT))

TARGET_RATIO = 3.0
TARGET_1M_SECONDS = 0.5


def torus(rings: int, segments: int, texture_size: int | None):
    """A displaced torus as a backend ``Mesh``: rings × segments vertices, 2 · rings · segments triangles.

    Vertex colours (float sRGB) vary smoothly around it; with ``texture_size``, per-corner UVs from the (u, v)
    parameters (a seam where they wrap) and a texture_size² pattern instead of the colours.
    """
    import torch

    from backend.mesh import Mesh

    i, j = np.meshgrid(np.arange(rings + 1), np.arange(segments + 1), indexing="ij")  # parameter grid with seams
    theta, phi = 2.0 * np.pi * i / rings, 2.0 * np.pi * j / segments
    minor = 0.3 * (1.0 + 0.08 * np.sin(7.0 * theta) * np.cos(5.0 * phi))
    x = (1.0 + minor * np.cos(phi)) * np.cos(theta)
    y = (1.0 + minor * np.cos(phi)) * np.sin(theta)
    z = minor * np.sin(phi)
    vertex = (i % rings) * segments + (j % segments)  # the parameter grid's point → the torus vertex
    positions = np.empty((rings * segments, 3), np.float32)
    positions[vertex.ravel()] = np.stack([x, y, z], axis=-1).reshape(-1, 3)

    grid = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b = grid[:-1, :-1].ravel(), grid[1:, :-1].ravel()
    c, d = grid[1:, 1:].ravel(), grid[:-1, 1:].ravel()
    grid_triangles = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    triangles = vertex.ravel()[grid_triangles]

    def tensor(array: np.ndarray, dtype=torch.float32):
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)

    if texture_size is None:
        colors = 0.5 + 0.5 * np.stack([np.sin(3 * theta), np.cos(2 * phi), np.sin(theta + phi)], axis=-1)
        colors_per_vertex = np.empty((rings * segments, 3), np.float32)
        colors_per_vertex[vertex.ravel()] = colors.reshape(-1, 3)
        return Mesh(tensor(positions), tensor(triangles, torch.int64), vertex_colors=tensor(colors_per_vertex))
    uv = np.stack([i / rings, j / segments], axis=-1).reshape(-1, 2)[grid_triangles]  # (M, 3, 2), v up
    t = np.linspace(0.0, 1.0, texture_size, dtype=np.float32)
    checker = ((np.floor(t * 16)[:, None] + np.floor(t * 16)[None, :]) % 2).astype(np.float32)
    texture = np.stack([checker, t[:, None] * np.ones_like(t), 0.5 + 0.5 * np.sin(9 * t)[None, :] * checker], -1)
    return Mesh(tensor(positions), tensor(triangles, torch.int64), uvs=tensor(uv), texture=tensor(texture))


def write_case(out_dir: Path, stem: str, mesh, formats: tuple[str, ...]) -> dict[str, Path]:
    from backend.export import ExportConfig, export_mesh

    return export_mesh(mesh, out_dir, ExportConfig(formats=formats, stem=stem))


def clear_scene() -> None:
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)  # no objects, meshes, materials or images left


def time_importer(npz: Path) -> dict[str, float]:
    import bpy

    from blender_addon import importer

    start = time.perf_counter()
    arrays = importer.read_mesh_npz(npz)
    read = time.perf_counter()
    importer.update_object(None, "Result", bpy.context.scene.collection, arrays)
    built = time.perf_counter()
    bpy.context.view_layer.update()
    evaluated = time.perf_counter()
    return {"read_s": read - start, "build_s": built - read, "total_s": built - start, "eval_s": evaluated - start}


def time_gltf(glb: Path) -> dict[str, float]:
    import bpy

    start = time.perf_counter()
    result = bpy.ops.import_scene.gltf(filepath=str(glb))
    done = time.perf_counter()
    if result != {"FINISHED"}:
        raise RuntimeError(f"import_scene.gltf returned {result} for {glb}")
    bpy.context.view_layer.update()
    evaluated = time.perf_counter()
    return {"total_s": done - start, "eval_s": evaluated - start}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", default=None, help="folder for results.json (default: print only)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (default 5; median shown)")
    parser.add_argument("--work", default=None, help="folder for the mesh files (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="a tiny torus and 2 runs: checks the plumbing only")
    args = parser.parse_args(argv)
    if args.work:
        return run(args, Path(args.work).resolve())
    with tempfile.TemporaryDirectory(prefix="bench-import-") as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    """Write the meshes into ``work``, time both ways, print the tables (and write results.json)."""
    # Before bpy is imported: keep Blender's user folders and caches out of the home directory.
    os.environ.setdefault("BLENDER_USER_RESOURCES", str(work / "blender-resources"))
    os.environ.setdefault("XDG_CACHE_HOME", str(work / "cache"))
    import bpy

    repeat = 2 if args.smoke else args.repeat
    rings, segments = (40, 50) if args.smoke else (400, 500)  # 200 000 vertices, 400 000 triangles
    big_rings, big_segments = (80, 50) if args.smoke else (1000, 500)  # 500 000 vertices, 1 000 000 triangles
    texture_size = 64 if args.smoke else 1024

    print(f"writing meshes to {work}", file=sys.stderr, flush=True)
    cases = {
        "vertex colours": write_case(work, "colours", torus(rings, segments, None), ("npz", "glb")),
        f"UVs + {texture_size}² texture": write_case(
            work, "textured", torus(rings, segments, texture_size), ("npz", "glb")
        ),
    }
    big_cases = {
        "vertex colours": write_case(work, "colours_1m", torus(big_rings, big_segments, None), ("npz",)),
        f"UVs + {texture_size}² texture": write_case(
            work, "textured_1m", torus(big_rings, big_segments, texture_size), ("npz",)
        ),
    }

    clear_scene()
    time_importer(cases["vertex colours"]["npz"])  # warm-up: first-call costs (module import, node types)
    clear_scene()
    time_gltf(cases["vertex colours"]["glb"])  # warm-up: the glTF add-on's own imports
    results = []
    for name, files in cases.items():
        importer_runs, gltf_runs = [], []
        for n in range(repeat):
            print(f"[{name}] run {n + 1}/{repeat}", file=sys.stderr, flush=True)
            clear_scene()
            importer_runs.append(time_importer(files["npz"]))
            clear_scene()
            gltf_runs.append(time_gltf(files["glb"]))
        mine, theirs = medians(importer_runs), medians(gltf_runs)
        results.append(
            {
                "case": name,
                "triangles": rings * segments * 2,
                "vertices": rings * segments,
                "importer": mine,
                "gltf": theirs,
                "ratio": theirs["total_s"] / mine["total_s"],
                "ratio_eval": theirs["eval_s"] / mine["eval_s"],
                "runs": {"importer": importer_runs, "gltf": gltf_runs},
            }
        )
    big_results = []
    for name, files in big_cases.items():
        runs = []
        for n in range(repeat):
            print(f"[{name}, 1M] run {n + 1}/{repeat}", file=sys.stderr, flush=True)
            clear_scene()
            runs.append(time_importer(files["npz"]))
        big_results.append({"case": name, "triangles": big_rings * big_segments * 2, "importer": medians(runs)})
    clear_scene()

    smoke = " (SMOKE: tiny mesh)" if args.smoke else ""
    headers = ["mesh", "read s", "build s", "importer s", "gltf s", "ratio", "importer + eval s", "gltf + eval s"]
    rows = [
        [
            f"{r['case']}, {r['triangles']:,} triangles",
            fmt(r["importer"]["read_s"], 3),
            fmt(r["importer"]["build_s"], 3),
            fmt(r["importer"]["total_s"], 3),
            fmt(r["gltf"]["total_s"], 3),
            f"{r['ratio']:.1f}×",
            fmt(r["importer"]["eval_s"], 3),
            fmt(r["gltf"]["eval_s"], 3),
        ]
        for r in results
    ]
    print(
        f"\n### importer vs import_scene.gltf, median of {repeat} runs{smoke}\n\n"
        + common.markdown_table(headers, rows)
    )
    headers = ["mesh", "read s", "build s", "importer s", "importer + eval s"]
    rows = [
        [
            f"{r['case']}, {r['triangles']:,} triangles",
            fmt(r["importer"]["read_s"], 3),
            fmt(r["importer"]["build_s"], 3),
            fmt(r["importer"]["total_s"], 3),
            fmt(r["importer"]["eval_s"], 3),
        ]
        for r in big_results
    ]
    print(f"\n### importer on 1M triangles, median of {repeat} runs{smoke}\n\n" + common.markdown_table(headers, rows))

    ratio_met = all(r["ratio"] >= TARGET_RATIO for r in results)
    big_met = all(r["importer"]["total_s"] <= TARGET_1M_SECONDS for r in big_results)
    print(
        f"\ntargets: importer ≥ {TARGET_RATIO:.0f}× faster than import_scene.gltf: {_verdict(ratio_met)}; "
        f"1M triangles ≤ {TARGET_1M_SECONDS} s: {_verdict(big_met)}"
    )
    if args.output:
        machine = common.machine_info("cpu")
        machine["blender"] = bpy.app.version_string
        path = common.write_results(
            Path(args.output).resolve(),
            "results.json",
            {
                "benchmark": "import",
                "smoke": args.smoke,
                "repeat": repeat,
                "machine": machine,
                "cases": results,
                "cases_1m": big_results,
                "targets": {"ratio": TARGET_RATIO, "seconds_1m": TARGET_1M_SECONDS},
            },
        )
        print(f"\nresults: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
