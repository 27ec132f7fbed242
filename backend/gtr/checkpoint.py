"""Reading, checking and converting GTR checkpoints.

Two formats:

- the official release: a torch pickle (``full_checkpoint.pth`` / ``ckpt.pth``) holding
  ``{'pipeline': {'generator': state_dict, 'field': state_dict}, ...}`` (a bare ``{'generator', 'field'}`` dict is
  accepted too). It is first read with ``weights_only=True``; full unpickling (which can run code from the file) only
  happens when the caller trusts the file. Its model settings are inferred from the tensor shapes.
- the project's own: a ``.safetensors`` file with keys ``generator.<key>`` / ``field.<key>`` and the
  :class:`~.config.ModelConfig` as JSON in the metadata (``gtr_config``), tagged ``format: gtr-backend-weights/1``.

Whatever the source, the weights are checked strictly against the modules the config builds (keys, shapes,
floating-point, finite) and handed out as float32. Nothing is ever downloaded: checkpoints are local files.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..export import write_atomic
from .config import FULL, SMALL, DecoderConfig, GeneratorConfig, ModelConfig
from .decoder import GTRField
from .generator import Generator

FORMAT = "gtr-backend-weights/1"
"""Value of the ``format`` metadata entry of the project's safetensors files."""
CONFIG_KEY = "gtr_config"
USUAL_NAMES = ("full_checkpoint.pth", "ckpt.pth")
"""Names the official download usually has (looked for when a folder is given)."""
PARTS = ("generator", "field")
MAX_LISTED = 10

TRUST_FIX = (
    "pass --trust-checkpoint (command line) or set trust_checkpoint: true (job option) only if the file comes from a "
    "source you trust, or convert it once (python -m backend convert-checkpoint --trust-checkpoint IN.pth "
    "OUT.safetensors) and use the .safetensors file from then on."
)


@dataclass
class Weights:
    """A GTR model's tensors (float32, CPU) and the settings they were trained with."""

    generator: dict[str, Tensor]
    field: dict[str, Tensor]
    config: ModelConfig
    source: str

    @property
    def tensor_count(self) -> int:
        return len(self.generator) + len(self.field)

    @property
    def numel(self) -> int:
        """Number of values in all tensors (parameters and the ``aabb`` buffer)."""
        return sum(t.numel() for part in (self.generator, self.field) for t in part.values())


# ---------------------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike, trust: bool = False, *, config: ModelConfig | None = None) -> Weights:
    """Read and check a checkpoint: the official torch pickle or the project's safetensors file.

    ``trust`` allows full unpickling of a pickle that ``weights_only`` loading refuses (it can run code from the
    file). ``config`` names the model a pickle is for (default: inferred from its tensor shapes, see
    :func:`infer_config`); for a safetensors file, which carries its config, it must agree with the stored one.
    """
    path = _resolve_path(Path(path))
    if _is_safetensors(path):
        generator, field, stored = _read_safetensors(path)
        if config is not None and config != stored:
            raise InputError(
                f"{path} holds weights for the {config_name(stored)} model, not the {config_name(config)} one.",
                fix="use the weights file that belongs to this model.",
            )
        config = stored
    else:
        generator, field = _split_parts(_load_pickle(path, trust), path)
        if config is None:
            config = infer_config(generator, field)
    weights = Weights(generator=generator, field=field, config=config, source=str(path))
    check_weights(weights)
    weights.generator = _as_float32(weights.generator)
    weights.field = _as_float32(weights.field)
    return weights


def _resolve_path(path: Path) -> Path:
    """The checkpoint file: ``path`` itself, or the usual download name inside a folder."""
    if path.is_dir():
        for name in USUAL_NAMES:
            if (path / name).is_file():
                return path / name
        raise InputError(f"{path} is a folder without {' or '.join(USUAL_NAMES)} in it.",
                         fix="pass the checkpoint file itself.")
    if not path.exists():
        raise InputError(
            f"checkpoint {path} does not exist.",
            fix="download the official GTR weights yourself (non-commercial licence; usually full_checkpoint.pth) "
            "and pass the local file's path; this program never downloads anything.",
        )
    return path


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by content: an 8-byte little-endian header length followed by a JSON object."""
    if path.suffix.lower() == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < path.stat().st_size


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``); the legacy format starts with a pickle protocol marker."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _load_pickle(path: Path, trust: bool) -> object:
    """``torch.load`` with ``weights_only=True``; with ``trust``, fall back to full unpickling (with a warning)."""
    if not _looks_like_torch_file(path):
        raise InputError(f"{path} is neither a torch checkpoint nor a safetensors file.",
                         fix="pass the official GTR checkpoint (full_checkpoint.pth) or a converted .safetensors.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refusal = err
    except (RuntimeError, EOFError, OSError) as err:
        raise _unreadable(path, err) from None
    if not trust:
        raise InputError(
            f"{path} holds objects other than tensors{_named_global(refusal)}, so reading it needs full unpickling, "
            "which can run arbitrary code stored in the file.",
            fix=TRUST_FIX,
        )
    warnings.warn(
        f"{path}: fully unpickling a trusted checkpoint (weights_only=False); this runs any code the file holds.",
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ImportError, AttributeError) as err:
        raise _unreadable(path, err) from None


def _named_global(err: Exception) -> str:
    """`` (e.g. argparse.Namespace)`` when torch's refusal names the offending class, else ``''``."""
    found = re.search(r"GLOBAL (\S+)", str(err))
    return f" (e.g. {found.group(1)})" if found else ""


def _unreadable(path: Path, err: Exception) -> InputError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return InputError(f"cannot read checkpoint {path}: {reason}",
                      fix="the file may be truncated or corrupt; download or convert it again.")


def _split_parts(obj: object, path: Path) -> tuple[dict, dict]:
    """The generator and field state dicts of ``{'pipeline': {...}}`` or a bare ``{'generator', 'field'}``."""
    if isinstance(obj, Mapping) and isinstance(obj.get("pipeline"), Mapping):
        obj = obj["pipeline"]
    if not (isinstance(obj, Mapping) and all(isinstance(obj.get(p), Mapping) for p in PARTS)):
        keys = sorted(map(str, obj.keys()))[:MAX_LISTED] if isinstance(obj, Mapping) else type(obj).__name__
        raise InputError(
            f"{path} has no GTR generator/field weights (expected ckpt['pipeline']['generator'] and ['field']; "
            f"found {keys}).",
            fix="pass the official GTR checkpoint (full_checkpoint.pth) or a converted .safetensors.",
        )
    return dict(obj["generator"]), dict(obj["field"])


def _read_safetensors(path: Path) -> tuple[dict, dict, ModelConfig]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None
    if meta.get("format") != FORMAT or CONFIG_KEY not in meta:
        raise InputError(
            f"{path} is not a GTR weights file of this program (metadata format {meta.get('format')!r}, "
            f"expected {FORMAT!r}).",
            fix="convert the official checkpoint with: python -m backend convert-checkpoint IN.pth OUT.safetensors",
        )
    try:
        config = ModelConfig.from_dict(json.loads(meta[CONFIG_KEY]))
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: unreadable model config in the metadata ({err}).",
                         fix="convert the checkpoint again.") from None
    stray = [key for key in tensors if key.partition(".")[0] not in PARTS]
    if stray:
        raise InputError(f"{path}: {_listing('unexpected', stray)} (expected generator.* and field.* only).",
                         fix="convert the checkpoint again.")
    parts: dict[str, dict] = {p: {} for p in PARTS}
    for key, tensor in tensors.items():
        part, _, name = key.partition(".")
        parts[part][name] = tensor
    return parts["generator"], parts["field"], config


def _as_float32(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: t.detach().to(torch.float32) for k, t in state.items()}


# -------------------------------------------------------------------------------------------------------- inference


def infer_config(generator: Mapping[str, Tensor], field: Mapping[str, Tensor], num_head_channels: int = 64
                 ) -> ModelConfig:
    """The model a pair of state dicts belongs to, read from the tensor shapes.

    Head count is not visible in the shapes: ``num_head_channels`` (64 in the released model) is assumed and
    ``num_heads`` = attention width / ``num_head_channels``. Settings not visible at all (colour saturation,
    inference constants) are the full model's. A missing tensor leaves the full model's value in place (the strict
    check then reports the missing key). A result matching a preset's network is that preset.
    """
    full_g, full_d = FULL.generator, FULL.decoder

    def shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...] | None:
        t = state.get(key)
        return tuple(t.shape) if isinstance(t, Tensor) else None

    def count(state: Mapping[str, Tensor], prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        return len({m.group(1) for key in state if (m := pattern.match(key))})

    planes = shape(generator, "planes")  # (1, 3, C, r, r)
    width, resolution = (planes[2], planes[3]) if planes and len(planes) == 5 else (full_g.model_channels,
                                                                                     full_g.plane_resolution)
    conv = shape(generator, "conv_proj.weight")  # (C, in_channels, P, P)
    in_channels, patch = (conv[1], conv[2]) if conv and len(conv) == 4 else (full_g.in_channels, full_g.patch_size)
    heads, head_channels = _infer_heads(shape(generator, "attn_layers.0.self_attn.to_q.weight"), num_head_channels)

    sigma_in = shape(field, "decoder.field.mlp_sigma.layers.0.weight")  # (width, 3·K)
    layer_width, channels = (sigma_in[0], sigma_in[1] // 3) if sigma_in and len(sigma_in) == 2 else (
        full_d.layer_width, full_d.channels)
    upsample = _infer_upsample(shape(generator, "out.proj.weight"), channels)

    gen = GeneratorConfig(
        in_channels=in_channels,
        plane_resolution=resolution,
        out_channels=channels,
        patch_size=patch,
        model_channels=width,
        num_layers=count(generator, "attn_layers."),
        num_heads=heads,
        num_head_channels=head_channels,
        upsample_factor=upsample,
        gated_ff=shape(generator, "attn_layers.0.ff.net.0.0.weight") is None,
        img_token_normalization=shape(generator, "norm1.weight") is not None or not generator,
    )
    dec = DecoderConfig(
        channels=channels,
        num_layers_sigma=count(field, "decoder.field.mlp_sigma.layers.") or full_d.num_layers_sigma,
        num_layers_color=count(field, "decoder.field.mlp_color.layers.") or full_d.num_layers_color,
        layer_width=layer_width,
        sigmoid_saturation=full_d.sigmoid_saturation,
    )
    for preset in (FULL, SMALL):
        if (preset.generator, preset.decoder) == (gen, dec):
            return preset
    return ModelConfig(generator=gen, decoder=dec)


def _infer_heads(to_q: tuple[int, ...] | None, head_channels: int) -> tuple[int, int]:
    """(num_heads, num_head_channels) from the query projection's rows (heads · head channels)."""
    if not to_q or len(to_q) != 2:
        return FULL.generator.num_heads, FULL.generator.num_head_channels
    inner = to_q[0]
    if inner % head_channels:
        return 1, inner  # matches the shapes; the true split cannot be known
    return inner // head_channels, head_channels


def _infer_upsample(proj: tuple[int, ...] | None, channels: int) -> int:
    """S from the upsampler's 1×1 convolution rows, K·S²."""
    if not proj or channels <= 0 or proj[0] % channels:
        return FULL.generator.upsample_factor
    factor = round((proj[0] // channels) ** 0.5)
    return factor if factor * factor * channels == proj[0] else FULL.generator.upsample_factor


def config_name(config: ModelConfig) -> str:
    """``FULL``, ``SMALL`` or ``custom``."""
    return "FULL" if config == FULL else "SMALL" if config == SMALL else "custom"


# ---------------------------------------------------------------------------------------------------------- checking


@lru_cache(maxsize=4)
def expected_shapes(config: ModelConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{'generator': {key: shape}, 'field': {key: shape}}`` of the modules ``config`` builds (on the meta device)."""
    generator, field = _meta_modules(config)
    return {
        "generator": {k: tuple(t.shape) for k, t in generator.state_dict().items()},
        "field": {k: tuple(t.shape) for k, t in field.state_dict().items()},
    }


def _meta_modules(config: ModelConfig) -> tuple[Generator, GTRField]:
    with torch.device("meta"):
        return Generator(config.generator), GTRField(config.decoder)


def check_weights(weights: Weights) -> None:
    """Strict check against the modules of ``weights.config``: same keys, same shapes, floating point, finite.

    Raises :class:`InputError` listing what is wrong (first few of each kind, with counts).
    """
    spec = expected_shapes(weights.config)
    missing, unexpected, misshaped, not_float = [], [], [], []
    for part in PARTS:
        got, want = getattr(weights, part), spec[part]
        missing += [f"{part}.{k}" for k in want if k not in got]
        unexpected += [f"{part}.{k}" for k in got if k not in want]
        for key, tensor in got.items():
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                kind = str(tensor.dtype).removeprefix("torch.") if isinstance(tensor, Tensor) else type(tensor).__name__
                not_float.append(f"{part}.{key} ({kind})")
            elif key in want and tuple(tensor.shape) != want[key]:
                misshaped.append(f"{part}.{key} expected {_shape(want[key])} got {_shape(tensor.shape)}")
    problems = [
        _listing("missing", missing),
        _listing("unexpected", unexpected),
        _listing("wrong shape", misshaped),
        _listing("not floating-point", not_float),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise InputError(
            f"{weights.source} does not match the {config_name(weights.config)} GTR model: " + "; ".join(problems)
            + ".",
            fix="use the official GTR checkpoint (full_checkpoint.pth) or a file written by convert-checkpoint.",
        )
    bad = [f"{part}.{k}" for part in PARTS for k, t in getattr(weights, part).items() if not torch.isfinite(t).all()]
    if bad:
        raise InputError(f"{weights.source}: {_listing('non-finite values (NaN or inf) in', bad)}.",
                         fix="the checkpoint is damaged; download or convert it again.")


def _shape(shape) -> str:
    return "(" + ", ".join(str(int(n)) for n in shape) + ")"


def _listing(kind: str, items: list[str]) -> str:
    """``'missing 12 keys: a, b, … (and 2 more)'``; empty when there are none."""
    if not items:
        return ""
    shown = ", ".join(items[:MAX_LISTED])
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{kind} {len(items)} key{'s' if len(items) != 1 else ''}: {shown}{more}"


# --------------------------------------------------------------------------------------------------------- building


def build_model(weights: Weights, device: str | torch.device = "cpu") -> tuple[Generator, GTRField]:
    """The generator and field with ``weights`` loaded (strict), in eval mode, without gradients, on ``device``."""
    generator, field = _meta_modules(weights.config)
    return _loaded(generator, weights.generator, device), _loaded(field, weights.field, device)


def _loaded(module: nn.Module, state: dict[str, Tensor], device: str | torch.device) -> nn.Module:
    # Built on the meta device, so the full model skips its random initialisation; storage is allocated uninitialised
    # and every value then comes from ``state``. Non-persistent buffers would stay uninitialised, hence the guard.
    if set(dict(module.named_buffers())) - set(module.state_dict()):
        raise RuntimeError(f"{type(module).__name__} has buffers outside its state dict; build it normally")
    module = module.to_empty(device=device)
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------- writing


def save_weights(weights: Weights, path: str | os.PathLike) -> Path:
    """Write the project's safetensors file (config in the metadata), atomically."""
    from safetensors.torch import save_file

    tensors = {f"{part}.{k}": t.contiguous() for part in PARTS for k, t in getattr(weights, part).items()}
    metadata = {"format": FORMAT, CONFIG_KEY: json.dumps(weights.config.to_dict())}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        umask = os.umask(0)  # safetensors creates the file 0600; give it the mode any new file gets
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)

    return _write_atomic(Path(path), write)


def save_official(weights: Weights, path: str | os.PathLike) -> Path:
    """Write a torch pickle in the official layout ``{'pipeline': {'generator': …, 'field': …}}`` (tensors only, so
    ``weights_only=True`` reads it), atomically."""
    ckpt = {"pipeline": {part: {k: _compact(t) for k, t in getattr(weights, part).items()} for part in PARTS}}
    return _write_atomic(Path(path), lambda tmp: torch.save(ckpt, tmp))


def _compact(t: Tensor) -> Tensor:
    """A plain tensor owning exactly its values (torch.save writes whole storages, views included)."""
    t = t.detach()
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    return t


def _write_atomic(path: Path, write) -> Path:
    """:func:`backend.export.write_atomic` into an existing folder (a missing one is the user's mistake)."""
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist.", fix="create it or choose another path.")
    write_atomic(path, write)
    return path
