"""``python -m backend train`` and ``python -m backend dataset check`` (added to :mod:`backend.cli`'s parser)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from ..errors import InputError


def add_commands(sub: argparse._SubParsersAction) -> None:
    from .config import PRESETS

    tr = sub.add_parser(
        "train", help="train a GTR model on a dataset (stage 1: volume renders, stage 2: mesh renders)",
        description="Train on a dataset written by render-dataset (docs/DATASET.md). Run it under torchrun for "
        "several processes: torchrun --nproc_per_node N -m backend train …",
    )
    tr.add_argument("dataset", help="dataset folder (with index.json)")
    tr.add_argument("--output", "-o", required=True, help="run folder: checkpoints/, model.safetensors, log.jsonl")
    tr.add_argument("--config", default="small",
                    help=f"a preset ({', '.join(PRESETS)}) or a JSON file of settings (default small)")
    tr.add_argument("--stage", type=int, choices=(1, 2), default=None, help="1: NeRF renders, 2: DiffMC mesh renders")
    tr.add_argument("--init", default=None,
                    help="start from this gtr checkpoint (stage 2: stage 1's model.safetensors)")
    tr.add_argument("--steps", type=int, default=None, help="optimiser steps of the run")
    tr.add_argument("--batch-size", type=int, default=None, help="objects per process per step")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other setting, VALUE as JSON (e.g. --set learning_rate=1e-3); repeatable")
    tr.add_argument("--resume", action="store_true", help="continue from the output folder's latest checkpoint")
    tr.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when present")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(run=cmd_train)

    ds = sub.add_parser("dataset", help="training datasets: check one")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    check = ds_sub.add_parser("check", help="read every object as training does; list the broken ones and why")
    check.add_argument("dataset", help="dataset folder (with index.json)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=cmd_dataset_check)


def overrides(args: argparse.Namespace) -> dict:
    """Settings given on the command line (``--stage``, ``--steps``, ``--batch-size``, ``--set``)."""
    from .config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    out = {k: v for k, v in (("stage", args.stage), ("steps", args.steps), ("batch_size", args.batch_size))
           if v is not None}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or key not in known or key == "model":
            raise InputError(f"--set {item!r}: not a KEY=VALUE of a training setting",
                             fix=f"settings: {', '.join(sorted(known - {'model'}))}.")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
        if key == "betas":
            out[key] = tuple(out[key])
    return out


def cmd_train(args) -> int:
    from ..progress import ConsoleProgress
    from .config import load_config
    from .engine import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(args.config, overrides(args))
    bar = None if args.quiet else ConsoleProgress()
    try:
        result = train(args.dataset, args.output, config, init=args.init, resume=args.resume, device=args.device,
                       progress=bar)
    finally:
        if bar:
            bar.close()
    for name, why in result.broken.items():
        print(f"warning: skipped broken object {name}: {why}", file=sys.stderr)
    if os.environ.get("RANK", "0") != "0":
        return 0
    state = "stopped early" if result.stopped else "finished"
    last = ", ".join(f"{k} {v:.4g}" for k, v in result.last.items() if isinstance(v, float) and v == v)
    print(f"{state} at step {result.step}: {last}", file=sys.stderr)
    if result.weights is not None:
        print(f"weights: {Path(args.output) / 'model.safetensors'} (use with --method gtr --checkpoint)",
              file=sys.stderr)
    return 0


def cmd_dataset_check(args) -> int:
    from ..dataset import check_dataset

    report = check_dataset(args.dataset)
    if args.json:
        print(json.dumps({"good": report.good, "broken": report.broken, "warnings": report.warnings}, indent=1))
    else:
        for warning in report.warnings:
            print(f"warning: {warning}")
        for name, why in report.broken.items():
            print(f"broken: {name}: {why}")
        print(f"{len(report.good)} good, {len(report.broken)} broken")
    return 0 if report.ok else 1
