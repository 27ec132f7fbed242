"""Benchmark the add-on from Reconstruct to the first preview object, and how long it holds Blender's main thread.

    python benchmarks/bench_addon.py [--output bench_out/addon] [--repeat 3]
    python benchmarks/bench_addon.py --smoke        # 8 views at 64², 8 fit steps: checks the plumbing only

One bpy process (the venv's ``bpy`` module) with the add-on enabled as an extension from a temporary local
repository; its backend runs on this interpreter (``python -m backend serve``, preset ``draft``, device ``cpu``).

The scene (deterministic): Suzanne with a level-2 subdivision modifier and an orange material, a sun, square
frames; ``gtr.ring_cameras`` places ``--views`` cameras around it and ``gtr.render_views`` renders them with
Cycles at ``--size``² and ``--samples`` samples (lit image, transparent film). Both operators are timed.

Then the operator's path of Reconstruct, step by step: ``job_writer.prepare`` (checks the views, writes the job
folder) and ``jobs.start`` (starts the backend if none is running, sends ``run``), then ``jobs.drain()`` in a loop
with a ``--poll`` sleep between calls, as ``jobs.run_until_done`` does in background mode. (``bpy.ops.gtr.reconstruct``
itself blocks until the job ends in background mode, so the moment of the first preview could not be seen
through it.) Every ``drain()`` call is timed here; ``jobs.session.longest_drain_s`` is kept as a cross-check.

- "to preview s": from the start of ``prepare`` to the end of the ``drain()`` call after which the job's preview
  object exists in ``bpy.data.objects``. In the app ``drain`` runs on a 0.1 s timer instead of every ``--poll``
  seconds, which can add up to 0.1 s. ``job.first_preview_s`` (what ``jobs.py`` records, from the end of
  ``prepare``) is shown beside it.
- cold: the first job, with no backend running: it starts the process (interpreter, torch import, handshake).
  This run goes on to the result object in the scene, so its drains include the final import.
- warm: ``--repeat`` more jobs on the same backend process, each cancelled at its first preview; the median is
  the warm figure. "cancel s" is from ``jobs.cancel()`` to the job's end (the backend's ``cancelled``).
- drains: every ``drain()`` call of a run; the max and the 99th percentile (of all calls, most of which find
  nothing to do), and what the longest one did ("preview": built a preview mesh, "result": the final object).

Targets (issue 8): first preview object ≤ 5 s after Reconstruct on CPU ``draft``; no ``drain()`` call over 50 ms.
Prints markdown tables; writes ``results.json`` to ``--output`` if given.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
common = importlib.import_module("bench_demo")  # the shared helpers (this folder is not a package)
fmt = common.fmt

ADDON_ID = "gtr_reconstruct"
REPO_MODULE = "gtr_bench"
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"

TARGET_PREVIEW_S = 5.0
TARGET_DRAIN_S = 0.05
NOTABLE_DRAIN_S = 0.001
"""Drain calls at least this long (or that built a mesh) are listed one by one in results.json."""
SMOKE_OPTIONS = {"fit_steps": 8, "mesh_resolution": 24, "refine_iterations": 5}


# --------------------------------------------------------------------------------------------------- set-up


def enable_addon(repo_dir: Path):
    """Enable ``blender_addon/`` as an extension from a local repository at ``repo_dir`` (a link named after the
    extension id), with this interpreter as the backend's; returns its ``jobs``, ``job_writer`` and ``preferences``
    modules."""
    import addon_utils  # Blender's own module: importable once bpy is (run() imports it first)
    import bpy

    link = repo_dir / ADDON_ID
    if not link.exists():  # a --work folder of an earlier run has it already
        os.symlink(common.REPO_ROOT / "blender_addon", link, target_is_directory=True)
    bpy.context.preferences.extensions.repos.new(
        name=REPO_MODULE, module=REPO_MODULE, custom_directory=str(repo_dir), source="USER"
    )
    errors = []
    if addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=errors.append) is None:
        raise RuntimeError(f"the add-on did not enable: {errors}")
    bpy.context.preferences.addons[ADDON_MODULE].preferences.backend_python = sys.executable
    return tuple(importlib.import_module(f"{ADDON_MODULE}.{name}") for name in ("jobs", "job_writer", "preferences"))


def disable_addon() -> None:
    """Unregister the add-on (which stops any backend still running)."""
    import addon_utils

    addon_utils.disable(ADDON_MODULE, default_set=True)


def build_scene(work: Path, views: int, size: int, samples: int, extra_options: dict) -> dict:
    """Suzanne (subdivided, orange), a sun, a ring of ``views`` cameras rendered at ``size``²; returns the timings
    of the two operators."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_monkey_add(size=2.0, location=(0.0, 0.0, 1.0))
    monkey = bpy.context.active_object
    monkey.modifiers.new("Subdivision", "SUBSURF").levels = 2
    bpy.ops.object.shade_smooth()
    material = bpy.data.materials.new("orange")  # in Blender 5 a new material has its node tree already
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.8, 0.3, 0.05, 1.0)
    monkey.data.materials.append(material)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (0.7, 0.2, 0.5)
    scene.collection.objects.link(sun)

    scene.render.resolution_x = scene.render.resolution_y = size  # square frames, as the CLI demo
    settings = scene.gtr
    settings.work_folder = str(work / "jobs")
    settings.ring_count, settings.render_size, settings.render_samples = views, size, samples
    settings.render_source = "LIT"
    settings.preset, settings.device, settings.method = "draft", "cpu", "FIT"
    settings.extra_options = json.dumps(extra_options) if extra_options else ""
    for obj in scene.objects:
        obj.select_set(obj == monkey)
    bpy.context.view_layer.objects.active = monkey

    began = time.perf_counter()
    if bpy.ops.gtr.ring_cameras() != {"FINISHED"}:
        raise RuntimeError(f"ring_cameras failed: {settings.status}")
    placed = time.perf_counter()
    if bpy.ops.gtr.render_views() != {"FINISHED"}:
        raise RuntimeError(f"render_views failed: {settings.status}")
    rendered = time.perf_counter()
    return {"views": len(settings.views), "ring_s": placed - began, "render_s": rendered - placed}


# ------------------------------------------------------------------------------------------------------ a job


def _mesh_key(obj_name: str | None):
    """What identifies the mesh an object shows now (its datablock's address), or None without an object."""
    import bpy

    obj = bpy.data.objects.get(obj_name) if obj_name else None
    return None if obj is None else obj.data.as_pointer()


def _faces(obj_name: str | None) -> int | None:
    import bpy

    obj = bpy.data.objects.get(obj_name) if obj_name else None
    return None if obj is None else len(obj.data.polygons)


def run_job(jobs, job_writer, python: str, label: str, complete: bool, poll: float, timeout: float) -> dict:
    """One Reconstruct: prepare + start + drain loop. Stops at the result (``complete``) or cancels at the first
    preview object. Returns the run's timings and its drain calls."""
    import bpy

    scene = bpy.context.scene
    warm = jobs.session.backend is not None and jobs.session.backend.alive
    jobs.session.longest_drain_s = 0.0
    began = time.perf_counter()
    job = job_writer.prepare(scene)
    prepared = time.perf_counter()
    jobs.start(job, python)
    started = time.perf_counter()
    backend = jobs.session.backend
    ready_s = None
    longest = (0.0, None)
    to_preview = first_stage = cancel_asked = None
    preview_faces: list[int] = []
    drains: list[float] = []
    notable: list[dict] = []
    deadline = started + timeout
    while jobs.session.job is job:
        mesh_before = _mesh_key(job.preview_object)
        t0 = time.perf_counter()
        jobs.drain()
        took = time.perf_counter() - t0
        drains.append(took)
        ended = jobs.session.job is not job
        built = None
        if ended and job.outcome is not None and job.outcome.state == "done":
            built = "result"
        elif not ended and _mesh_key(job.preview_object) not in (None, mesh_before):
            built = "preview"
            preview_faces.append(_faces(job.preview_object))
        if took > longest[0]:
            longest = (took, built)
        if built or took >= NOTABLE_DRAIN_S:
            notable.append({"at_s": round(t0 - began, 3), "ms": round(took * 1e3, 3), "built": built})
        now = time.perf_counter()
        if not warm and ready_s is None and backend.ready is not None:
            ready_s = now - began
        if to_preview is None and job.preview_object is not None and not ended:
            to_preview = now - began
            first_stage = scene.gtr.stage
            if not complete:
                cancel_asked = now
                jobs.cancel()
        if now > deadline and job.cancel_requested is None:
            print(f"  [{label}] timed out after {timeout:.0f} s: cancelling", file=sys.stderr, flush=True)
            cancel_asked = now
            jobs.cancel()
        if not ended:
            time.sleep(poll)
    finished = time.perf_counter()
    outcome = job.outcome
    durations = np.array(drains)
    return {
        "run": label,
        "backend": "warm" if warm else "cold",
        "backend_pid": backend.pid,
        "end": outcome.state if outcome else "unknown",
        "message": outcome.message if outcome else "",
        "prepare_s": prepared - began,
        "start_s": started - prepared,
        "ready_s": ready_s,
        "to_preview_s": to_preview,
        "first_preview_s": job.first_preview_s,
        "stage_at_first_preview": first_stage,
        "preview_faces": preview_faces,
        "result_faces": _faces(outcome.object_name) if outcome and outcome.state == "done" else None,
        "job_s": finished - began,
        "cancel_s": None if cancel_asked is None else finished - cancel_asked,
        "drain_count": len(drains),
        "drain_max_s": float(durations.max()),
        "drain_p99_s": float(np.percentile(durations, 99)),
        "drain_median_s": float(np.median(durations)),
        "drains_over_target": int((durations > TARGET_DRAIN_S).sum()),
        "longest_drain_s_jobs": jobs.session.longest_drain_s,
        "longest_drain_built": longest[1],
        "notable_drains": notable,
        "all_drains_s": drains,
    }


# ---------------------------------------------------------------------------------------------------- report


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.1f}"


def report(args, scene_info: dict, runs: list[dict], ready: dict | None, blender: str) -> dict:
    """Print the tables; returns the summary that goes into results.json."""
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    device = ready.get("device", "?") if ready else "?"
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    print(f"\nbench_addon: {command}")
    print(f"machine: {machine}; Blender {blender} (bpy), backend device {device}; {time.strftime('%Y-%m-%d %H:%M')}")
    smoke = " (SMOKE: tiny sizes)" if args.smoke else ""
    options = f", extra options {json.dumps(scene_info['extra_options'])}" if scene_info["extra_options"] else ""
    print(
        f"\n### Views: {scene_info['views']} ring cameras, {args.size}² Cycles CPU, {args.samples} samples{smoke}\n\n"
        + common.markdown_table(
            ["ring cameras s", "render views s", "per view s"],
            [
                [
                    fmt(scene_info["ring_s"], 3),
                    fmt(scene_info["render_s"], 2),
                    fmt(scene_info["render_s"] / scene_info["views"], 3),
                ]
            ],
        )
    )
    headers = [
        "run",
        "backend",
        "ready s",
        "to preview s",
        "first_preview_s",
        "stage then",
        "preview faces",
        "end",
        "job s",
        "cancel s",
        "drains",
        "max drain ms",
        "p99 drain ms",
        "longest did",
    ]
    rows = [
        [
            r["run"],
            r["backend"],
            fmt(r["ready_s"]),
            fmt(r["to_preview_s"]),
            fmt(r["first_preview_s"]),
            r["stage_at_first_preview"] or "–",
            ", ".join(f"{f:,}" for f in r["preview_faces"]) or "–",
            r["end"] + (f" ({r['result_faces']:,} faces)" if r["result_faces"] else ""),
            fmt(r["job_s"], 1),
            fmt(r["cancel_s"]),
            r["drain_count"],
            _ms(r["drain_max_s"]),
            _ms(r["drain_p99_s"]),
            r["longest_drain_built"] or "messages",
        ]
        for r in runs
    ]
    title = f"Reconstruct → first preview object, preset draft, CPU{options}{smoke}"
    print(f"\n### {title}\n\n" + common.markdown_table(headers, rows))

    cold = runs[0]
    warm = [r for r in runs[1:] if r["backend"] == "warm" and r["to_preview_s"] is not None]
    warm_median = statistics.median(r["to_preview_s"] for r in warm) if warm else None
    every = np.concatenate([np.array(r["all_drains_s"]) for r in runs])
    summary = {
        "cold_to_preview_s": cold["to_preview_s"],
        "warm_to_preview_median_s": warm_median,
        "drain_count": int(every.size),
        "drain_max_s": float(every.max()),
        "drain_p99_s": float(np.percentile(every, 99)),
        "drains_over_target": int((every > TARGET_DRAIN_S).sum()),
    }
    print(
        f"\nall runs: {summary['drain_count']} drain() calls, max {_ms(summary['drain_max_s'])} ms, "
        f"99th percentile {_ms(summary['drain_p99_s'])} ms, {summary['drains_over_target']} over "
        f"{TARGET_DRAIN_S * 1e3:.0f} ms; to first preview: cold {fmt(cold['to_preview_s'])} s, warm median "
        f"{fmt(warm_median)} s of {len(warm)}"
    )
    preview_met = cold["to_preview_s"] is not None and cold["to_preview_s"] <= TARGET_PREVIEW_S
    warm_met = warm_median is not None and warm_median <= TARGET_PREVIEW_S
    print(
        f"targets: first preview ≤ {TARGET_PREVIEW_S:.0f} s: cold {_verdict(preview_met)}, warm {_verdict(warm_met)}; "
        f"longest drain ≤ {TARGET_DRAIN_S * 1e3:.0f} ms: {_verdict(summary['drains_over_target'] == 0)}"
    )
    summary["command"] = command
    summary["date"] = time.strftime("%Y-%m-%d %H:%M")
    return summary


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", default=None, help="folder for results.json (default: print only)")
    parser.add_argument("--repeat", type=int, default=3, help="warm runs, each cancelled at its first preview")
    parser.add_argument("--views", type=int, default=16, help="ring cameras (default 16)")
    parser.add_argument("--size", type=int, default=160, help="render side in pixels (default 160, the CLI demo's)")
    parser.add_argument("--samples", type=int, default=8, help="Cycles samples per pixel (default 8)")
    parser.add_argument("--poll", type=float, default=0.02, help="sleep between drain() calls (default 0.02 s)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a job is cancelled")
    parser.add_argument("--work", default=None, help="folder for renders and job folders (default: a temp folder)")
    parser.add_argument(
        "--smoke", action="store_true", help="8 views at 64², 8 fit steps, 2 warm runs: checks the plumbing"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.views, args.size, args.samples, args.repeat = 8, 64, 4, min(args.repeat, 2)
    if args.work:
        return run(args, Path(args.work).resolve())
    with tempfile.TemporaryDirectory(prefix="bench-addon-") as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    # Before bpy is imported: keep Blender's user folders and caches out of the home directory.
    os.environ.setdefault("BLENDER_USER_RESOURCES", str(work / "blender-resources"))
    os.environ.setdefault("XDG_CACHE_HOME", str(work / "cache"))
    import bpy

    (work / "extensions").mkdir(parents=True, exist_ok=True)
    jobs, job_writer, preferences = enable_addon(work / "extensions")
    try:
        extra = SMOKE_OPTIONS if args.smoke else {}
        print(f"rendering {args.views} views at {args.size}² into {work}", file=sys.stderr, flush=True)
        scene_info = dict(build_scene(work, args.views, args.size, args.samples, extra), extra_options=extra)
        python = preferences.backend_python(bpy.context)  # what the operator starts the backend with
        jobs.release_backend()  # the first job starts the backend: cold
        runs = []
        for n in range(args.repeat + 1):
            label = "cold" if n == 0 else f"warm {n}"
            print(f"[{label}] reconstruct", file=sys.stderr, flush=True)
            runs.append(run_job(jobs, job_writer, python, label, n == 0, args.poll, args.timeout))
            print(f"  {runs[-1]['end']}: {runs[-1]['message'].splitlines()[0]}", file=sys.stderr, flush=True)
        ready = jobs.session.backend.ready if jobs.session.backend else None
        summary = report(args, scene_info, runs, ready, bpy.app.version_string)
    finally:
        jobs.release_backend()
        disable_addon()
    if args.output:
        machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
        machine.update(blender=bpy.app.version_string, backend=ready)
        for r in runs:
            r.pop("all_drains_s")
        path = common.write_results(
            Path(args.output).resolve(),
            "results.json",
            {
                "benchmark": "addon",
                "smoke": args.smoke,
                "scene": scene_info,
                "size": args.size,
                "samples": args.samples,
                "poll_s": args.poll,
                "machine": machine,
                "summary": summary,
                "runs": runs,
                "targets": {"first_preview_s": TARGET_PREVIEW_S, "drain_s": TARGET_DRAIN_S},
            },
        )
        print(f"\nresults: {path}", file=sys.stderr)
    return 0 if all(r["to_preview_s"] is not None for r in runs) and runs[0]["end"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
