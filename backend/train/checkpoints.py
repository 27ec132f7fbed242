"""Training checkpoints: the weights as a ``gtr`` checkpoint, plus what resuming needs.

``OUTPUT/checkpoints/step_NNNNNNN.safetensors`` holds the weights in the project's format (so any of them plugs
into ``reconstruct --method gtr --checkpoint``); ``step_NNNNNNN.state.pt`` beside it holds the optimiser and
schedule state, the step and the config (plain tensors and numbers: loaded with ``weights_only=True``);
``OUTPUT/latest.json`` names the newest pair. ``OUTPUT/model.safetensors`` is a copy of the newest weights.
Each file is written to a temporary name and renamed, so an interrupted save never leaves a broken checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..export import write_atomic
from ..gtr.checkpoint import Weights, read_checkpoint, save_weights

LATEST = "latest.json"
MODEL = "model.safetensors"


@dataclass
class Resume:
    """What a checkpoint restores: the weights, the optimiser's and schedule's states, the next step."""

    weights: Weights
    optimizer: dict
    scheduler: dict
    step: int
    config: dict


def save(output: Path, step: int, weights: Weights, optimizer: dict, scheduler: dict, config: dict, keep: int) -> Path:
    """Write step ``step``'s checkpoint under ``output`` and point ``latest.json`` at it; keep the newest ``keep``."""
    folder = output / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step:07d}"
    weights_path = save_weights(weights, folder / f"{stem}.safetensors")
    state_path = folder / f"{stem}.state.pt"
    state = {"optimizer": optimizer, "scheduler": scheduler, "step": step, "config": json.dumps(config)}
    write_atomic(state_path, lambda tmp: torch.save(state, tmp))
    write_atomic(output / MODEL, lambda tmp: shutil.copyfile(weights_path, tmp))
    latest = {"step": step, "weights": f"checkpoints/{stem}.safetensors", "state": f"checkpoints/{stem}.state.pt"}
    write_atomic(output / LATEST, lambda tmp: Path(tmp).write_text(json.dumps(latest)))
    for old in sorted(folder.glob("step_*.safetensors"))[:-keep]:
        old.unlink()
        old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)
    return weights_path


def load_latest(output: Path) -> Resume | None:
    """The checkpoint ``latest.json`` names, or None when the run has none yet."""
    pointer = output / LATEST
    if not pointer.is_file():
        return None
    info = json.loads(pointer.read_text())
    state_path = output / info["state"]
    if not state_path.is_file():
        raise InputError(f"{pointer} names {state_path}, which is missing",
                         fix="delete latest.json to start again, or restore the checkpoint files.")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    weights = read_checkpoint(output / info["weights"])
    return Resume(weights, state["optimizer"], state["scheduler"], int(state["step"]), json.loads(state["config"]))
