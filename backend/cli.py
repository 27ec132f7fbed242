"""Command line: ``python -m backend reconstruct | demo | eval | convert-checkpoint | serve | train | dataset``.

Input errors print one line (no traceback) and exit with status 2; a cancel (Ctrl+C) exits with 130. ``serve`` is
the Blender add-on's backend (JSON lines over stdin/stdout, :mod:`backend.serve`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import Cancelled, InputError
from .options import OPTIONS, add_flags, from_args

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


def _add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p)  # one flag per option of the registry (backend/options.py)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace) -> dict:
    """The options given as flags, checked (a bad value is an InputError here, before any work)."""
    options = from_args(args)
    if "checkpoint" in options:  # relative to the working folder on the command line
        options["checkpoint"] = str(Path(options["checkpoint"]).expanduser().resolve())
    return options


def _warn(warnings, already=()) -> None:
    for warning in warnings:
        if warning not in already:
            print(f"warning: {warning}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="posed images → textured mesh")
    rec.add_argument(
        "input",
        help="job.json, a transforms*.json, a COLMAP model, an LLFF poses_bounds.npy, or a folder holding one "
        "(or cam_XXX.txt files)",
    )
    rec.add_argument(
        "--output", "-o", required=True, help="output folder (mesh.npz, mesh.glb, metrics.json; created when writing)"
    )
    rec.add_argument("--formats", default="npz,glb", help="comma-separated: npz,glb,obj,ply (default npz,glb)")
    rec.add_argument(
        "--bounds", type=float, nargs=6, metavar=("MIN_X", "MIN_Y", "MIN_Z", "MAX_X", "MAX_Y", "MAX_Z"),
        help="the box the object lies in, in the input's world units (instead of the job's bounds, or of the box "
        "estimated for photos without masks)",
    )
    _add_pipeline_flags(rec)
    rec.set_defaults(run=cmd_reconstruct)

    demo = sub.add_parser("demo", help="reconstruct a built-in procedural object and score it")
    demo.add_argument("--output", "-o", required=True, help="output folder")
    demo.add_argument("--size", type=int, default=160, help="image size of the generated views")
    _add_pipeline_flags(demo)
    demo.set_defaults(run=cmd_demo)

    ev = sub.add_parser("eval", help="reconstruct a nerf_synthetic-style dataset's train split, score on test views")
    ev.add_argument("dataset", help="folder with transforms_train.json and transforms_test.json (and gt.ply)")
    ev.add_argument("--output", "-o", required=True, help="output folder (report.json, contact_sheet.png, mesh)")
    ev.add_argument("--train-views", default=None, help="comma-separated train frame indices (default: all)")
    ev.add_argument("--test-views", type=int, default=None, help="use the first N test views (default: all)")
    ev.add_argument("--volume-views", type=int, default=8, help="test views also volume-rendered (default 8)")
    ev.add_argument("--gt-mesh", default=None, help="ground-truth mesh (default: DATASET/gt.ply when present)")
    _add_pipeline_flags(ev)
    ev.set_defaults(run=cmd_eval)

    conv = sub.add_parser("convert-checkpoint", help="check a GTR checkpoint and convert it (.pth ↔ .safetensors)")
    conv.add_argument("input", help="the official checkpoint (full_checkpoint.pth / ckpt.pth) or a .safetensors")
    conv.add_argument("output", help="OUTPUT.safetensors (this program's format), any other name: official .pth")
    conv.add_argument("--trust-checkpoint", action="store_true", help=OPTIONS["trust_checkpoint"].help)
    conv.set_defaults(run=cmd_convert_checkpoint)

    serve = sub.add_parser("serve", help="the Blender add-on's backend: JSON lines over stdin/stdout")
    serve.set_defaults(run=cmd_serve)

    from .train.commands import add_commands

    add_commands(sub)  # train, dataset check
    return parser


def _hooks(args):
    from .progress import ConsoleProgress, Hooks

    if args.quiet:
        return Hooks(), None
    bar = ConsoleProgress()
    return Hooks(progress=bar), bar


def _run_pipeline(job, args, formats: tuple[str, ...] = ("npz", "glb")):
    from dataclasses import replace

    from .pipeline import config_from_options, reconstruct, resolve_device

    config = config_from_options(job.options)
    config = replace(config, export=replace(config.export, formats=formats))
    device = resolve_device(job.options.get("device", "auto"))
    _warn(job.warnings)
    hooks, bar = _hooks(args)
    try:
        result = reconstruct(job, config, device, hooks)
    finally:
        if bar:
            bar.close()
    return result, config


def _check_device(options: dict) -> None:
    """A device given on the command line is checked before any work (a job.json's after loading)."""
    if "device" in options:
        from .pipeline import resolve_device

        resolve_device(options["device"])


def cmd_reconstruct(args) -> int:
    options = _options(args)  # first: a bad value fails before anything heavy is imported

    from .export import FORMATS
    from .inputs import check_output_dir, load_job
    from .pipeline import write_outputs

    out_dir = check_output_dir(args.output)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        fix = f"use a comma-separated subset of {','.join(FORMATS)}."
        raise InputError(f"unknown output format(s) {bad}.", fix=fix)
    _check_device(options)
    if args.bounds is not None:
        options["bounds"] = {"min": args.bounds[:3], "max": args.bounds[3:]}
    job = load_job(args.input, options_override=options)
    result, config = _run_pipeline(job, args, formats)
    metrics = write_outputs(result, out_dir, config)
    _warn(result.warnings, already=job.warnings)
    print(
        f"wrote {out_dir} ({metrics['faces']} faces, train PSNR {metrics['train_psnr']:.2f} dB, "
        f"{metrics['seconds']:.1f} s)",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args) -> int:
    options = _options(args)

    from .demo import run_demo
    from .inputs import check_output_dir

    out_dir = check_output_dir(args.output)
    _check_device(options)
    hooks, bar = _hooks(args)
    try:
        metrics = run_demo(out_dir, size=args.size, options=options, device_name=options.get("device", "auto"),
                           hooks=hooks)
    finally:
        if bar:
            bar.close()
    print(
        f"demo: held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}, "
        f"F-score {metrics['fscore']:.3f}, {metrics['seconds']:.1f} s → {out_dir}",
        file=sys.stderr,
    )
    return 0


def cmd_eval(args) -> int:
    options = _options(args)

    from .evaluate import contact_sheet, evaluate
    from .export import save_png, write_json_atomic
    from .inputs import check_output_dir, load_transforms, validate_job
    from .inputs.transforms import find_transforms_file
    from .pipeline import write_outputs

    out_dir = check_output_dir(args.output)
    dataset = Path(args.dataset)
    select = None
    if args.train_views:
        try:
            select = [int(s) for s in args.train_views.split(",") if s.strip()]
        except ValueError:
            raise InputError(
                f"--train-views must be comma-separated integers, got {args.train_views!r}.",
                fix="list frame positions in transforms_train.json, e.g. --train-views 0,2,4.",
            ) from None
    _check_device(options)
    start = time.perf_counter()
    job = validate_job(load_transforms(find_transforms_file(dataset, "train"), select=select, options=options))
    test_file = find_transforms_file(dataset, "test")
    test_select = list(range(args.test_views)) if args.test_views else None
    test = load_transforms(test_file, select=test_select).views
    result, config = _run_pipeline(job, args)
    gt_path = Path(args.gt_mesh) if args.gt_mesh else dataset / "gt.ply"
    gt = None
    if gt_path.exists():
        import trimesh

        gt_mesh = trimesh.load(gt_path, force="mesh", process=False)
        gt = (gt_mesh.vertices, gt_mesh.faces)
    elif args.gt_mesh:
        raise InputError(f"ground-truth mesh {gt_path} does not exist.", fix="pass an existing --gt-mesh path.")
    evaluation = evaluate(result, test, gt, volume_views=args.volume_views)
    write_outputs(result, out_dir, config)
    _warn(result.warnings, already=job.warnings)
    report = dict(
        evaluation.metrics,
        dataset=str(dataset),
        train_views=len(job.views),
        reconstruct=result.metrics,
        seconds=round(time.perf_counter() - start, 2),
    )
    write_json_atomic(out_dir / "report.json", report)
    save_png(out_dir / "contact_sheet.png", contact_sheet(evaluation.pairs))
    print(
        f"eval: mesh PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.3f}, volume PSNR "
        f"{report.get('volume_psnr', float('nan')):.2f} dB" + (f", F-score {report['fscore']:.3f}" if gt else ""),
        file=sys.stderr,
    )
    return 0


def cmd_convert_checkpoint(args) -> int:
    from .gtr.checkpoint import config_name, read_checkpoint, save_official, save_weights

    source, target = Path(args.input), Path(args.output)
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise InputError(f"output {target} is the input file.", fix="write the converted checkpoint elsewhere.")
    weights = read_checkpoint(source, trust=args.trust_checkpoint)
    safetensors = target.suffix.lower() == ".safetensors"
    (save_weights if safetensors else save_official)(weights, target)
    print(
        f"wrote {target} ({'safetensors' if safetensors else 'official torch pickle'}): {weights.tensor_count} "
        f"tensors, {weights.numel:,} parameters, config {config_name(weights.config)}",
        file=sys.stderr,
    )
    return 0


def cmd_serve(args) -> int:
    from .serve import main as serve_main

    return serve_main()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except (Cancelled, KeyboardInterrupt):
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
