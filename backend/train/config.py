"""Training settings: one frozen dataclass, a docstring per field, named presets, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import InputError
from ..gtr.config import FULL, DecoderConfig, GeneratorConfig, ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """One training run (stage 1 or stage 2) of a GTR model on a dataset (docs/DATASET.md)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network's shape; ``model.input_size`` is the generator's image side."""
    stage: int = 1
    """1: supervise volume renders (NeRF). 2: extract the mesh with differentiable marching cubes and supervise
    mesh renders (images, masks, depth, normals); starts from a stage-1 checkpoint."""
    steps: int = 1000
    """Optimiser steps of the whole run (the cosine schedule spans them)."""
    batch_size: int = 2
    """Objects per process per step (the global batch is this × the number of processes)."""
    input_views: int = 4
    """Views the generator sees per object (GTR: 4)."""
    supervision_views: int = 4
    """Views rendered and compared per object (GTR: 4); drawn from the views the generator did not see when the
    object has enough."""
    render_size: int = 64
    """Side the supervision views are resized to."""
    patch_size: int = 32
    """Stage 1: each supervision view renders one random ``patch_size``² crop of its ``render_size``² image."""
    samples_per_ray: int = 64
    """Stage 1: volume-rendering samples per ray (bin midpoints between the box's entry and exit)."""
    mesh_resolution: int = 64
    """Stage 2: marching-cubes grid side over [-1, 1]³."""
    mesh_level: float | None = None
    """Stage 2: the density level of the surface (None: the model's ``mesh_level``). Stage 2 shapes the surface at
    this level and the trained model carries it, so inference extracts the same surface."""
    learning_rate: float = 4e-4
    """Peak AdamW learning rate, reached after the warm-up."""
    min_learning_rate: float = 0.0
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to ``learning_rate``."""
    weight_decay: float = 0.05
    """AdamW weight decay (matrices only; biases, norms and the learned plane tokens have none)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold (0: none)."""
    image_weight: float = 1.0
    """Weight of the MSE between the rendered and the target colours (on white)."""
    mask_weight: float = 1.0
    """Weight of the MSE between rendered opacity (stage 1) or coverage (stage 2) and the mask."""
    perceptual_weight: float = 0.5
    """Stage 1: weight of the perceptual term on the rendered patches: LPIPS with ``lpips_weights``, else
    (1 − SSIM)."""
    lpips_weights: str | None = None
    """A local LPIPS (VGG) weights file (see :mod:`backend.train.lpips`); None: the perceptual term is 1 − SSIM."""
    depth_weight: float = 1.0
    """Stage 2: weight of the L1 depth error (canonical units) where both the render and the target see the object."""
    normal_weight: float = 0.2
    """Stage 2: weight of (1 − cos) between rendered and target normals where both see the object."""
    seed: int = 0
    """Seeds the initial weights and every random choice (objects' order, views, patches): a run is a function of
    (config, dataset), which is what makes resuming exact."""
    checkpoint_every: int = 100
    """Steps between checkpoints (one is always written at the end and when the run is stopped)."""
    keep_checkpoints: int = 3
    """Most recent checkpoints kept on disk."""
    log_every: int = 10
    """Steps between scalar log entries (log.jsonl, TensorBoard)."""
    preview_every: int = 100
    """Steps between image previews (TensorBoard, previews/)."""
    precision: str = "auto"
    """"auto" (bf16 autocast on CUDA, float32 on CPU), "bf16" or "fp32"."""
    gradient_checkpointing: bool = False
    """Recompute the transformer's activations in the backward pass (less memory for big models)."""
    cache_objects: int = 512
    """Objects kept decoded in memory (per process)."""

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise InputError(f"stage must be 1 or 2, got {self.stage}", fix="use --stage 1 or --stage 2.")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"precision must be auto, bf16 or fp32, got {self.precision!r}",
                             fix="set precision to auto, bf16 or fp32.")
        if self.patch_size > self.render_size:
            raise InputError(f"patch_size {self.patch_size} exceeds render_size {self.render_size}",
                             fix="choose a patch_size no larger than render_size.")
        if self.model.input_size % self.model.generator.patch_size:
            raise InputError(f"input_size {self.model.input_size} is not a multiple of the generator's patch size "
                             f"{self.model.generator.patch_size}", fix="choose an input_size the patches tile.")
        for name in ("steps", "batch_size", "input_views", "supervision_views", "render_size", "patch_size",
                     "samples_per_ray", "mesh_resolution", "checkpoint_every", "log_every", "preview_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}",
                                 fix=f"set {name} to 1 or more.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training settings: {', '.join(unknown)}",
                             fix=f"known settings: {', '.join(sorted(known))}.")
        model = ModelConfig.from_dict(data.pop("model")) if "model" in data else ModelConfig()
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(model=model, **data)


TINY_MODEL = ModelConfig(
    generator=GeneratorConfig(plane_resolution=4, out_channels=8, patch_size=8, model_channels=64, num_layers=2,
                              num_heads=2, num_head_channels=32, upsample_factor=4),
    decoder=DecoderConfig(channels=8, layer_width=32),
    input_size=32,
    samples_per_ray=32,
    mesh_resolution=32,
    mesh_level=2.0,
)
"""A fraction of a second per step on a CPU: for tests and smoke runs (trained briefly, its densities stay low, so
its surface level is too)."""

SMALL_MODEL = ModelConfig(
    generator=GeneratorConfig(plane_resolution=8, out_channels=16, patch_size=8, model_channels=192, num_layers=6,
                              num_heads=4, num_head_channels=48, upsample_factor=4),
    decoder=DecoderConfig(channels=16, layer_width=32),
    input_size=64,
    samples_per_ray=64,
    mesh_resolution=96,
)
"""A few million parameters: trains on a CPU in an hour or on a GPU in minutes."""

PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(model=TINY_MODEL, steps=40, batch_size=2, render_size=32, patch_size=16,
                        samples_per_ray=32, mesh_resolution=32, warmup_steps=5, learning_rate=1e-3,
                        checkpoint_every=20, log_every=1, preview_every=20),
    "small": TrainConfig(model=SMALL_MODEL, steps=2000, batch_size=4, render_size=64, patch_size=32,
                         samples_per_ray=64, mesh_resolution=64, warmup_steps=100, learning_rate=5e-4),
    "full": TrainConfig(model=FULL, steps=100_000, batch_size=8, render_size=128, patch_size=128,
                        samples_per_ray=128, mesh_resolution=256, warmup_steps=3000, learning_rate=4e-4,
                        precision="auto", gradient_checkpointing=True, checkpoint_every=1000, preview_every=500),
}
"""``tiny`` (tests), ``small`` (a CPU or a single GPU), ``full`` (the released model's shape, many GPUs)."""


def load_config(name_or_path: str, overrides: dict | None = None) -> TrainConfig:
    """A preset name or a JSON file (a :meth:`TrainConfig.to_dict`), then ``overrides`` (field → value)."""
    if name_or_path in PRESETS:
        config = PRESETS[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError(f"no training preset or config file {name_or_path!r}",
                             fix=f"use one of {', '.join(PRESETS)} or a JSON file.")
        try:
            config = TrainConfig.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise InputError(f"cannot read training config {path} ({exc})",
                             fix="write a JSON object of TrainConfig fields.") from None
    return replace(config, **(overrides or {}))
