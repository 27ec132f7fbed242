"""Where a run's numbers and pictures go: ``log.jsonl`` always, TensorBoard when installed, ``previews/`` PNGs.

``log.jsonl`` has one JSON object per logged step (``step``, the loss terms, ``lr``, ``grad_norm``,
``objects_per_s``, ...). A resumed run appends to it. TensorBoard event files go to ``OUTPUT/tensorboard``
(``tensorboard --logdir OUTPUT/tensorboard``) when the ``tensorboard`` package is importable; otherwise the run
says so once and carries on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)


class RunLog:
    """Scalars and image previews of one training run (only the first process writes)."""

    def __init__(self, output: Path, enabled: bool = True):
        self.output = output
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("TensorBoard is not installed (pip install tensorboard): logging to log.jsonl and "
                        "previews/ only")
        else:
            self._tb = SummaryWriter(str(output / "tensorboard"))

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with open(self.output / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value == value:
                    self._tb.add_scalar(f"train/{key}", value, step)

    def preview(self, step: int, images: torch.Tensor | None) -> None:
        """``images`` (N, 3, H, W) in [0, 1] (target then render) side by side."""
        if not self.enabled or images is None:
            return
        row = images.detach().float().clamp(0, 1).cpu()
        strip = torch.cat(list(row), dim=-1)  # (3, H, N·W)
        folder = self.output / "previews"
        folder.mkdir(exist_ok=True)
        pixels = (strip.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"step_{step:07d}.png")
        if self._tb is not None:
            self._tb.add_image("train/target_render", strip, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, float):
        return round(value, 7)
    return value
