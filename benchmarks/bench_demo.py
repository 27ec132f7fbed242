"""Benchmark ``python -m backend demo``: wall time, peak memory and the demo's held-out scores.

    python benchmarks/bench_demo.py --output bench_out/demo [--size 160] [--preset draft] [--device auto] [--repeat 1]
    python benchmarks/bench_demo.py --output /tmp/smoke --smoke      # seconds: checks the plumbing only

Each run is a fresh subprocess; peak memory is that process's maximum resident set size (``os.wait4``). Prints a
markdown table and writes ``results.json`` to ``--output``.

The helpers here (running the backend as a measured subprocess, the ``--smoke`` preset, markdown tables) are
shared by the other scripts in this folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# ``--smoke``: the CLI with ``draft`` shrunk to a few seconds of work, so a benchmark script can be checked end to
# end without the real (minutes-long) run. The numbers it produces say nothing about quality.
SMOKE_RUNNER = """
import sys
from dataclasses import replace
from backend import pipeline
d = pipeline.PRESETS["draft"]
pipeline.PRESETS["draft"] = replace(
    d, max_image_size=96,
    fit=replace(d.fit, steps=60, rays_per_step=512, hull_resolution=48,
                field=replace(d.fit.field, resolution=64)),
    extract=replace(d.extract, resolution=48),
    refine=replace(d.refine, iterations=10, points_per_step=4096),
)
from backend.cli import main
sys.exit(main(sys.argv[1:]))
"""


def backend_command(args: list[str], smoke: bool = False) -> list[str]:
    """``python -m backend ARGS`` (or the ``--smoke`` runner with the same arguments)."""
    if smoke:
        return [sys.executable, "-c", SMOKE_RUNNER, *args]
    return [sys.executable, "-m", "backend", *args]


def run_measured(command: list[str], log_path: Path, timeout: float | None = None, env: dict | None = None) -> dict:
    """Run ``command`` from the repository root; returns exit code, wall seconds and peak RSS in MB.

    stdout + stderr go to ``log_path``. The child's own peak RSS comes from ``os.wait4`` (Linux: kilobytes).
    ``env``: the child's environment (default this process's), the repository added to ``PYTHONPATH``.
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1.0 / 1024.0 if sys.platform != "darwin" else 1.0 / (1024.0 * 1024.0)  # macOS reports bytes
    last = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_mb": round(usage.ru_maxrss * scale, 1),
        "log": str(log_path),
        "last_line": last[-1][-300:] if last else "",
    }


def run_eval(cli_args: list[str], run_dir: Path, log_path: Path, smoke: bool, timeout: float | None) -> dict:
    """One ``python -m backend eval`` subprocess, measured; its ``report.json`` under ``report`` (None on failure,
    which is also printed)."""
    record = run_measured(backend_command(cli_args, smoke), log_path, timeout)
    report = read_json(run_dir / "report.json") if record["exit_code"] == 0 else None
    if report is None:
        print(f"  failed (exit {record['exit_code']}): {record['last_line']}", file=sys.stderr)
    return dict(record, report=report)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "device": device,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(out_dir: Path, name: str, payload: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", default="bench_out/demo", help="results folder (default bench_out/demo)")
    parser.add_argument("--size", type=int, default=160, help="demo image size (default 160)")
    parser.add_argument("--preset", choices=["draft", "standard", "high"], default="draft")
    parser.add_argument("--texture", choices=["vertex", "uv"], default=None)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--repeat", type=int, default=1, help="runs (each a fresh process)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    parser.add_argument("--smoke", action="store_true", help="tiny preset and --size 32: checks the plumbing only")
    args = parser.parse_args(argv)

    out_dir = Path(args.output).resolve()
    size = 32 if args.smoke else args.size
    runs = []
    for n in range(args.repeat):
        run_dir = out_dir / f"run{n}"
        cli_args = [
            "demo",
            "--output",
            str(run_dir),
            "--size",
            str(size),
            "--preset",
            args.preset,
            "--device",
            args.device,
            "--quiet",
        ]
        if args.texture:
            cli_args += ["--texture", args.texture]
        print(f"[{n + 1}/{args.repeat}] demo --size {size} --preset {args.preset}", file=sys.stderr, flush=True)
        record = run_measured(backend_command(cli_args, args.smoke), out_dir / f"run{n}.log", args.timeout)
        metrics = read_json(run_dir / "metrics.json") if record["exit_code"] == 0 else None
        record["metrics"] = metrics
        if metrics is None:
            print(f"  failed (exit {record['exit_code']}): {record['last_line']}", file=sys.stderr)
        runs.append(record)

    headers = ["run", "wall s", "peak MB", "PSNR", "SSIM", "F-score", "Chamfer L1", "faces"]
    rows = []
    for n, r in enumerate(runs):
        m = r["metrics"] or {}
        rows.append(
            [
                n,
                fmt(r["wall_s"], 1),
                fmt(r["peak_mb"], 0),
                fmt(m.get("psnr")),
                fmt(m.get("ssim"), 3),
                fmt(m.get("fscore"), 3),
                fmt(m.get("chamfer_l1"), 4),
                fmt(m.get("faces")),
            ]
        )
    title = f"demo, size {size}, preset {args.preset}{' (SMOKE: tiny preset)' if args.smoke else ''}"
    print(f"\n### {title}\n\n" + markdown_table(headers, rows))
    path = write_results(
        out_dir,
        "results.json",
        {
            "benchmark": "demo",
            "smoke": args.smoke,
            "size": size,
            "preset": args.preset,
            "machine": machine_info(args.device),
            "runs": runs,
        },
    )
    print(f"\nresults: {path}", file=sys.stderr)
    return 0 if all(r["metrics"] is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
