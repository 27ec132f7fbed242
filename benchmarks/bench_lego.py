"""Benchmark on nerf_synthetic lego: the ``full`` and ``sparse8`` protocols through ``python -m backend eval``.

    python benchmarks/bench_lego.py --output bench_out/lego [--data ../shared/data/nerf_synthetic_lego_400]
                                    [--protocol full|sparse8|all] [--preset draft] [--device auto]
                                    [--fit-steps N] [--fit-seconds S] [--surface fused|density]
    python benchmarks/bench_lego.py --output /tmp/smoke --smoke      # sparse8, tiny preset: plumbing only

Protocols: ``full`` reconstructs from all train views; ``sparse8`` from train views 26, 86, 2, 55, 75, 93, 16, 73.
Both are scored on the first 25 test views (mesh renders; volume renders on ``--volume-views`` of them). Each run
is a fresh subprocess (wall time, peak RSS). Prints a markdown table and writes ``results.json`` to ``--output``.
Without the data folder it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

common = importlib.import_module("bench_demo")  # the shared helpers (this folder is not a package)
fmt = common.fmt

DEFAULT_DATA = common.REPO_ROOT.parent / "shared" / "data" / "nerf_synthetic_lego_400"
SPARSE8 = (26, 86, 2, 55, 75, 93, 16, 73)
PROTOCOLS = {"full": None, "sparse8": SPARSE8}
TEST_VIEWS = 25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="lego folder with transforms_train.json / transforms_test.json"
    )
    parser.add_argument("--output", "-o", default="bench_out/lego", help="results folder")
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "all"], default="all")
    parser.add_argument("--preset", choices=["draft", "standard", "high"], default="draft")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--test-views", type=int, default=TEST_VIEWS, help=f"first N test views (default {TEST_VIEWS})")
    parser.add_argument("--volume-views", type=int, default=8, help="test views also volume-rendered (default 8)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    parser.add_argument("--fit-steps", type=int, default=None, help="passed to eval (default: the preset's)")
    parser.add_argument("--fit-seconds", type=float, default=None, help="passed to eval (default: the preset's)")
    parser.add_argument("--surface", choices=["fused", "density"], default=None,
                        help="passed to eval (default: the preset's)")
    parser.add_argument(
        "--smoke", action="store_true", help="sparse8 only, tiny preset, 2 test views: checks the plumbing only"
    )
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not data.is_absolute():
        data = (common.REPO_ROOT / data).resolve()
    if not (data / "transforms_train.json").is_file():
        print(f"skipped: lego dataset not found at {data} (pass --data)", file=sys.stderr)
        return 0

    protocols = list(PROTOCOLS) if args.protocol == "all" else [args.protocol]
    test_views, volume_views = args.test_views, args.volume_views
    if args.smoke:
        protocols, test_views, volume_views = ["sparse8"], 2, 1
    out_dir = Path(args.output).resolve()
    results = []
    for n, name in enumerate(protocols):
        run_dir = out_dir / name
        cli_args = [
            "eval",
            str(data),
            "--output",
            str(run_dir),
            "--preset",
            args.preset,
            "--device",
            args.device,
            "--test-views",
            str(test_views),
            "--volume-views",
            str(volume_views),
            "--quiet",
        ]
        if PROTOCOLS[name] is not None:
            cli_args += ["--train-views", ",".join(str(i) for i in PROTOCOLS[name])]
        if args.fit_steps is not None:
            cli_args += ["--fit-steps", str(args.fit_steps)]
        if args.fit_seconds is not None:
            cli_args += ["--fit-seconds", str(args.fit_seconds)]
        if args.surface is not None:
            cli_args += ["--surface", args.surface]
        print(f"[{n + 1}/{len(protocols)}] lego {name}", file=sys.stderr, flush=True)
        record = common.run_eval(cli_args, run_dir, out_dir / f"{name}.log", args.smoke, args.timeout)
        results.append(dict(record, protocol=name))

    headers = [
        "protocol",
        "train views",
        "test views",
        "wall s",
        "peak MB",
        "mesh PSNR",
        "SSIM",
        "volume PSNR",
        "faces",
    ]
    rows = []
    for r in results:
        m = r["report"]
        if m is None:
            rows.append(
                [
                    r["protocol"],
                    "",
                    "",
                    fmt(r["wall_s"], 1),
                    fmt(r["peak_mb"], 0),
                    f"failed (exit {r['exit_code']})",
                    "",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                r["protocol"],
                fmt(m.get("train_views")),
                fmt(m.get("test_views")),
                fmt(r["wall_s"], 1),
                fmt(r["peak_mb"], 0),
                fmt(m.get("psnr")),
                fmt(m.get("ssim"), 3),
                fmt(m.get("volume_psnr")),
                fmt((m.get("reconstruct") or {}).get("faces")),
            ]
        )
    title = f"lego, preset {args.preset}{' (SMOKE: tiny preset)' if args.smoke else ''}"
    print(f"\n### {title}\n\n" + common.markdown_table(headers, rows))
    path = common.write_results(
        out_dir,
        "results.json",
        {
            "benchmark": "lego",
            "smoke": args.smoke,
            "data": str(data),
            "preset": args.preset,
            "test_views": test_views,
            "sparse8": list(SPARSE8),
            "machine": common.machine_info(args.device),
            "runs": results,
        },
    )
    print(f"\nresults: {path}", file=sys.stderr)
    return 0 if all(r["report"] is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
