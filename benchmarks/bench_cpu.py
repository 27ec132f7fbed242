"""Benchmark the demo on a shared CPU: alone, then beside one and two CPU-bound competitors.

    python benchmarks/bench_cpu.py --output bench_out/cpu [--competitors 0,1,2] [--spin backend|default]
    python benchmarks/bench_cpu.py --output /tmp/smoke --smoke      # seconds: checks the plumbing only

The measured run is ``python -m backend demo`` (preset ``draft``) in a fresh process; each competitor is another
demo process started just before it, in its own folder, and killed once the measured run ends (so the whole
measured run has company). ``--spin default`` gives every process ``GOMP_SPINCOUNT=300000`` (libgomp's own
default, the behaviour before ``backend/threads.py``); ``backend`` leaves the backend's short spin in force.
Prints a markdown table (quality, time, fit steps, peak memory) and writes ``results.json`` to ``--output``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench_demo import (
    REPO_ROOT,
    backend_command,
    fmt,
    machine_info,
    markdown_table,
    read_json,
    run_measured,
    write_results,
)


def start_competitor(out_dir: Path, size: int, smoke: bool, env: dict) -> subprocess.Popen:
    log = open(out_dir.with_suffix(".log"), "w", encoding="utf-8")  # noqa: SIM115 (closed with the process)
    args = ["demo", "--output", str(out_dir), "--size", str(size), "--quiet"]
    return subprocess.Popen(backend_command(args, smoke), cwd=REPO_ROOT, env=env, stdout=log, stderr=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", default="bench_out/cpu")
    parser.add_argument("--size", type=int, default=160, help="demo image size (default 160)")
    parser.add_argument("--competitors", default="0,1,2", help="comma-separated counts of competing demos")
    parser.add_argument("--spin", choices=["backend", "default"], default="backend")
    parser.add_argument("--smoke", action="store_true", help="tiny preset and --size 32: checks the plumbing only")
    args = parser.parse_args(argv)

    out_dir = Path(args.output).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    size = 32 if args.smoke else args.size
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("OMP_WAIT_POLICY", None)
    if args.spin == "default":
        env["GOMP_SPINCOUNT"] = "300000"  # the user's value wins over the backend's
    else:
        env.pop("GOMP_SPINCOUNT", None)
    runs = []
    for count in [int(c) for c in args.competitors.split(",")]:
        name = f"{args.spin}_{count}"
        print(f"demo beside {count} competitor(s), OpenMP spin {args.spin}", file=sys.stderr, flush=True)
        others = [start_competitor(out_dir / f"{name}_other{k}", size, args.smoke, env) for k in range(count)]
        try:
            cli_args = ["demo", "--output", str(out_dir / name), "--size", str(size), "--quiet"]
            record = run_measured(backend_command(cli_args, args.smoke), out_dir / f"{name}.log", env=env)
        finally:
            for other in others:
                other.kill()
                other.wait()
        record["competitors"] = count
        record["metrics"] = read_json(out_dir / name / "metrics.json") if record["exit_code"] == 0 else None
        if record["metrics"] is None:
            print(f"  failed (exit {record['exit_code']}): {record['last_line']}", file=sys.stderr)
        runs.append(record)

    headers = ["competitors", "OpenMP spin", "wall s", "peak MB", "fit steps", "held-out PSNR", "F-score", "stages s"]
    rows = []
    for r in runs:
        m = r["metrics"] or {}
        t = m.get("timings", {})
        stages = ", ".join(f"{k} {v:.0f}" for k, v in t.items() if k != "total" and v >= 1)
        rows.append(
            [
                r["competitors"],
                args.spin,
                fmt(r["wall_s"], 1),
                fmt(r["peak_mb"], 0),
                fmt(m.get("fit_steps")),
                fmt(m.get("psnr")),
                fmt(m.get("fscore"), 3),
                stages or "–",
            ]
        )
    title = f"demo beside competitors, size {size}{' (SMOKE: tiny preset)' if args.smoke else ''}"
    print(f"\n### {title}\n\n" + markdown_table(headers, rows))
    payload = {
        "benchmark": "cpu",
        "smoke": args.smoke,
        "size": size,
        "spin": args.spin,
        "machine": machine_info("cpu"),
        "runs": runs,
    }
    print(f"\nresults: {write_results(out_dir, 'results.json', payload)}", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
