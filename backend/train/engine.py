"""The training loop: one process, or one per device under ``torchrun`` (DDP: NCCL on CUDA, gloo on CPU).

Each step: the process's share of the batch (:mod:`.data`) → :class:`.model.TrainModel` (bf16 autocast for the
generator on CUDA) → backward → gradient clipping → AdamW → cosine schedule with a linear warm-up. Checkpoints
(:mod:`.checkpoints`) every ``checkpoint_every`` steps, at the end, and when the run is asked to stop (SIGTERM,
SIGINT, or a caller's ``stop``): every process agrees on the step to stop after, the first one writes, and
``resume=True`` continues from there on the same loss curve.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from ..dataset import read_index
from ..errors import InputError
from ..gtr.checkpoint import read_checkpoint
from ..threads import available_cpus, use_threads
from . import checkpoints
from .config import TrainConfig
from .data import TrainingSet
from .logs import RunLog
from .lpips import load_lpips
from .model import PerceptualTerm, TrainModel

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a run ended: the last completed step, whether it was stopped early, its last logged values."""

    step: int
    stopped: bool
    last: dict
    weights: Path | None
    broken: dict[str, str]


@dataclass(frozen=True)
class Process:
    """This process's place in the run: rank, number of processes, device."""

    rank: int
    world: int
    device: torch.device

    @property
    def first(self) -> bool:
        return self.rank == 0


def start_process(device: str = "auto") -> Process:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device", fix="use --device cpu.")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        use_threads(max(1, available_cpus() // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Process(rank, world, dev)


def learning_rate_factor(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each step: linear warm-up, then cosine down to the minimum."""
    floor = config.min_learning_rate / config.learning_rate

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model: TrainModel, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and convolutions only (not biases, norms or the learned plane tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.endswith("generator.planes") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class StopRequest:
    """Set by SIGTERM / SIGINT (main thread only) or by the caller; checked once per step by every process."""

    def __init__(self, external: threading.Event | None = None):
        self.event = external or threading.Event()
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def agreed(self, process: Process) -> bool:
        """Whether any process was asked to stop (all processes get the same answer at the same step)."""
        flag = torch.tensor([1.0 if self.event.is_set() else 0.0], device=process.device)
        if process.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _mean_over_processes(values: dict, process: Process) -> dict:
    keys = [k for k, v in values.items() if isinstance(v, (int, float))]
    if process.world == 1 or not keys:
        return {k: values[k] for k in keys}
    t = torch.tensor([float(values[k]) for k in keys], device=process.device, dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / process.world for k, v in zip(keys, t.tolist())}


def train(
    data: str | Path,
    output: str | Path,
    config: TrainConfig,
    *,
    init: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: Callable[[str, int, int, str], None] | None = None,
    stop: threading.Event | None = None,
) -> TrainResult:
    """Train on the dataset at ``data``, writing checkpoints and logs under ``output``.

    ``init``: a ``gtr`` checkpoint to start from (stage 2 starts from stage 1's ``model.safetensors``); its model
    shape replaces ``config.model``. ``resume``: continue from ``output``'s latest checkpoint (an error when the
    settings differ from that run's, other than ``steps``). ``stop``: set it to end the run after the current step
    (with a checkpoint), as SIGTERM does.
    """
    output = Path(output)
    process = start_process(device)
    if init is not None:
        weights = read_checkpoint(init)
        config = replace(config, model=weights.config)
    if config.mesh_level is not None:
        config = replace(config, model=replace(config.model, mesh_level=config.mesh_level))
    lpips = load_lpips(config.lpips_weights, process.device) if config.lpips_weights else None
    torch.manual_seed(config.seed)
    model = TrainModel(config, PerceptualTerm(lpips)).to(process.device)
    if init is not None:
        model.load_weights(weights)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.learning_rate,
                                  betas=config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(config))
    start = 0
    if resume:
        state = checkpoints.load_latest(output)
        if state is not None:
            _check_same_run(state.config, config)
            model.load_weights(state.weights)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            start = state.step
    dataset = TrainingSet(read_index(data), config)
    net = model
    if process.world > 1:
        ids = [process.device.index] if process.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=config.stage == 2)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and process.device.type == "cuda")
    autocast = (lambda: torch.autocast(process.device.type, dtype=torch.bfloat16)) if bf16 else (lambda: None)
    runlog = RunLog(output, enabled=process.first)
    if process.first and config.stage == 1 and config.perceptual_weight > 0 and lpips is None:
        log.info("perceptual term: 1 - SSIM (no lpips_weights given; GTR uses LPIPS, whose weights this program "
                 "never downloads)")
    source = f"trained: {config.steps} steps of stage {config.stage} on {Path(data).name}"
    save = lambda step: checkpoints.save(output, step, model.weights(source), optimizer.state_dict(),
                                         scheduler.state_dict(), config.to_dict(), config.keep_checkpoints)
    last: dict = {}
    step, stopped, weights_path = start, False, None
    report = progress if (progress is not None and process.first) else None
    timer = time.perf_counter()
    with StopRequest(stop) as request:
        for step in range(start, config.steps):
            model.train()
            batch = dataset.batch(step, process.rank, process.world).to(process.device)
            out = net(batch, autocast())
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            limit = config.grad_clip if config.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), limit))
            optimizer.step()
            scheduler.step()
            done = step + 1
            values = {k: v for k, v in out.items() if k not in ("loss", "preview")}
            values = {"loss": float(out["loss"].detach()), **values}
            if done % config.log_every == 0 or done == config.steps:
                values = _mean_over_processes(values, process)
                elapsed = time.perf_counter() - timer
                timer = time.perf_counter()
                objects = config.batch_size * process.world * (config.log_every if done % config.log_every == 0 else 1)
                last = {**values, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                        "objects_per_s": objects / max(elapsed, 1e-9)}
                runlog.scalars(done, last)
            if done % config.preview_every == 0:
                runlog.preview(done, out.get("preview"))
            if report is not None:
                report("train", done, config.steps, f"loss {values['loss']:.4f}")
            stopped = request.agreed(process)
            if stopped or done % config.checkpoint_every == 0 or done == config.steps:
                if process.first:
                    weights_path = save(done)
                if process.world > 1:
                    dist.barrier()
            if stopped:
                why = request.signal_name or "a stop request"
                log.warning("stopped after step %d by %s; continue with --resume", done, why)
                step = done
                break
        else:
            step = config.steps
    runlog.close()
    if process.world > 1:
        dist.destroy_process_group()
    return TrainResult(step=step, stopped=stopped, last=last, weights=weights_path, broken=dict(dataset.broken))


def _check_same_run(saved: dict, config: TrainConfig) -> None:
    """Resuming needs the same settings (the number of steps may grow)."""
    now = config.to_dict()
    differ = sorted(k for k in set(saved) | set(now) if k != "steps" and _jsonish(saved.get(k)) != _jsonish(now.get(k)))
    if differ:
        raise InputError(f"the run in this output folder used other settings ({', '.join(differ)})",
                         fix="resume with the same settings, or train into a new output folder.")


def _jsonish(value):
    import json

    return json.loads(json.dumps(value))
