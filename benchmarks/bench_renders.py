"""Benchmark ``python -m backend eval`` on every dataset folder of the shared renders (bob, duck, spot, ...).

    python benchmarks/bench_renders.py --output bench_out/renders [--data ../shared/data/renders] [--preset draft]
    python benchmarks/bench_renders.py --output /tmp/smoke --smoke    # first dataset, tiny preset: plumbing only
    python benchmarks/bench_renders.py --output bench_out/gtr --method gtr --checkpoint RUN/model.safetensors

A dataset folder is any sub-folder of ``--data`` holding ``transforms_train.json``. Each one is reconstructed in a
fresh subprocess (wall time, peak RSS) and scored on its test views (``report.json``). Prints a markdown table
and writes ``results.json`` to ``--output``. Without the data folder it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

common = importlib.import_module("bench_demo")  # the shared helpers (this folder is not a package)
fmt = common.fmt

DEFAULT_DATA = common.REPO_ROOT.parent / "shared" / "data" / "renders"


def find_datasets(root: Path, names: list[str] | None) -> list[Path]:
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "transforms_train.json").is_file())
    if names:
        wanted = set(names)
        missing = wanted - {p.name for p in found}
        if missing:
            print(f"not found in {root}: {', '.join(sorted(missing))}", file=sys.stderr)
        found = [p for p in found if p.name in wanted]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of datasets (default ../shared/data/renders)")
    parser.add_argument("--output", "-o", default="bench_out/renders", help="results folder")
    parser.add_argument("--datasets", default=None, help="comma-separated dataset names (default: all)")
    parser.add_argument("--preset", choices=["draft", "standard", "high"], default="draft")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--method", choices=["fit", "gtr"], default="fit", help="reconstruction method (default fit)")
    parser.add_argument("--checkpoint", default=None, help="gtr checkpoint (with --method gtr)")
    parser.add_argument("--train-views", default=None, help="comma-separated train frame indices (default: all)")
    parser.add_argument("--test-views", type=int, default=None, help="score on the first N test views (default all)")
    parser.add_argument("--volume-views", type=int, default=None, help="test views also volume-rendered")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    parser.add_argument(
        "--smoke", action="store_true", help="first dataset only, tiny preset, 2 test views: checks the plumbing only"
    )
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not data.is_absolute():
        data = (common.REPO_ROOT / data).resolve()
    if not data.is_dir():
        print(f"skipped: dataset folder {data} not found (pass --data)", file=sys.stderr)
        return 0
    datasets = find_datasets(data, args.datasets.split(",") if args.datasets else None)
    if args.smoke:
        datasets = datasets[:1]
    if not datasets:
        print(f"skipped: no dataset folders (with transforms_train.json) in {data}", file=sys.stderr)
        return 0

    out_dir = Path(args.output).resolve()
    test_views = 2 if args.smoke and args.test_views is None else args.test_views
    volume_views = 1 if args.smoke and args.volume_views is None else args.volume_views
    results = []
    for n, folder in enumerate(datasets):
        run_dir = out_dir / folder.name
        cli_args = [
            "eval",
            str(folder),
            "--output",
            str(run_dir),
            "--preset",
            args.preset,
            "--device",
            args.device,
            "--quiet",
        ]
        if args.method == "gtr":
            cli_args += ["--method", "gtr", "--checkpoint", str(Path(args.checkpoint or "").resolve())]
        if args.train_views:
            cli_args += ["--train-views", args.train_views]
        if test_views:
            cli_args += ["--test-views", str(test_views)]
        if volume_views is not None:
            cli_args += ["--volume-views", str(volume_views)]
        print(f"[{n + 1}/{len(datasets)}] eval {folder.name}", file=sys.stderr, flush=True)
        record = common.run_eval(cli_args, run_dir, out_dir / f"{folder.name}.log", args.smoke, args.timeout)
        results.append(dict(record, name=folder.name))

    headers = ["dataset", "wall s", "peak MB", "mesh PSNR", "SSIM", "volume PSNR", "F-score", "Chamfer L1"]
    rows = []
    for r in results:
        m = r["report"]
        if m is None:
            rows.append(
                [
                    r["name"],
                    fmt(r["wall_s"], 1),
                    fmt(r["peak_mb"], 0),
                    f"failed (exit {r['exit_code']})",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                r["name"],
                fmt(r["wall_s"], 1),
                fmt(r["peak_mb"], 0),
                fmt(m.get("psnr")),
                fmt(m.get("ssim"), 3),
                fmt(m.get("volume_psnr")),
                fmt(m.get("fscore"), 3),
                fmt(m.get("chamfer_l1"), 4),
            ]
        )
    method = f", method gtr ({args.checkpoint})" if args.method == "gtr" else ""
    title = f"renders, preset {args.preset}{method}{' (SMOKE: tiny preset)' if args.smoke else ''}"
    print(f"\n### {title}\n\n" + common.markdown_table(headers, rows))
    path = common.write_results(
        out_dir,
        "results.json",
        {
            "benchmark": "renders",
            "smoke": args.smoke,
            "data": str(data),
            "preset": args.preset,
            "method": args.method,
            "checkpoint": args.checkpoint,
            "train_views": args.train_views,
            "test_views": test_views,
            "machine": common.machine_info(args.device),
            "runs": results,
        },
    )
    print(f"\nresults: {path}", file=sys.stderr)
    return 0 if all(r["report"] is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
