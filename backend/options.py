"""The options registry: every user option (a job.json ``options`` key, usually also a CLI flag) defined once.

Each :class:`Option` holds its key, value type and check (range or choices), CLI flag, help text, and the
:class:`backend.pipeline.PipelineConfig` path(s) it sets (``faces`` sets ``extract.target_faces`` and
``gtr.target_faces``); the defaults of path options are the presets' values. Everything else is derived:

- :func:`add_flags` / :func:`from_args`: the argparse flags of ``reconstruct``, ``demo`` and ``eval``;
- :func:`check_options`: every value checked before any work (:class:`InputError` with a fix), unknown keys
  turned into warnings that name the closest known key;
- :func:`apply`: the config with the options applied (what ``pipeline.configure`` does);
- :func:`markdown_table`: the README's options table (``python -m backend.options`` prints it).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from .errors import InputError

BAKE_BYTES_PER_TEXEL = 400
"""Peak memory of a UV bake per texel of the texture. Measured 385 at 1024² and 328 at 2048² (CPU, the pure-torch
rasteriser: ``tests/test_options.py`` notes the measurement); rounded up."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Option:
    """One user option."""

    key: str
    """The job.json ``options`` key; the CLI flag is ``--`` + the key with ``-`` for ``_``."""
    kind: type
    """Value type: ``int``, ``float``, ``str``, ``bool``, or ``object`` (checked by ``validate`` only)."""
    help: str
    """One line for ``--help`` and the README."""
    paths: tuple[str, ...] = ()
    """Dotted ``PipelineConfig`` fields the value is written to; empty for options read elsewhere."""
    choices: tuple[str, ...] = ()
    """Allowed values of a ``str`` option; empty: any."""
    minimum: float | None = None
    """Smallest allowed value (inclusive) of a number."""
    maximum: float | None = None
    """Largest allowed value (inclusive) of a number."""
    positive: bool = False
    """A number must be > 0."""
    flag: bool = True
    """Whether the command line has a flag for it (loader options are job.json only)."""
    default: object = None
    """The value used when the option is absent, for options without ``paths`` (those take the preset's)."""
    unset: str = "none"
    """What ``None`` in the config means for this option, for the README."""
    validate: Callable[[object], object] | None = None
    """Further check run after the type and range checks; returns the value to use or raises InputError."""
    metavar: str | None = None
    """Placeholder in ``--help`` (default ``N`` for integers, ``S`` for numbers)."""
    values: str = ""
    """The allowed values in words, where type, range and choices do not say it."""

    @property
    def flag_name(self) -> str:
        return "--" + self.key.replace("_", "-")

    def rule(self) -> str:
        """The allowed values in words, e.g. ``an integer from 16 to 16384``."""
        if self.values:
            return self.values
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a string"
        noun = "an integer" if self.kind is int else "a number"
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{noun} ≥ {self.minimum:g}"
        return f"{noun} > 0" if self.positive else noun

    def check(self, value):
        """``value`` converted to the option's type, or :class:`InputError` saying what is allowed."""
        where = f"{self.flag_name} or job.json options.{self.key}" if self.flag else f"job.json options.{self.key}"
        fix = f"use {self.rule()} for {where}."

        def bad(reason: str) -> InputError:
            return InputError(f"option {self.key} {reason}, got {value!r}.", fix=fix)

        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad("must be true or false")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"must be {'an integer' if self.kind is int else 'a number'}")
            if self.kind is int:
                if value != int(value):
                    raise bad("must be an integer")
                value = int(value)
            else:
                value = float(value)
            low_ok = self.minimum is None or value >= self.minimum
            high_ok = self.maximum is None or value <= self.maximum
            if not (low_ok and high_ok and (value > 0 or not self.positive)):
                raise bad(f"must be {self.rule()}")
        elif self.kind is str:
            if not isinstance(value, str):
                raise bad("must be a string")
            if self.choices and value not in self.choices:
                raise InputError(f"unknown {self.key} {value!r}.", fix=fix)
        return self.validate(value) if self.validate else value


def _check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise InputError(f"unknown device {value!r}.", fix="use auto, cpu, cuda or cuda:N (N = 0, 1, ...).")
    return value


def _check_background(value):
    from .inputs.images import parse_colour

    parse_colour(value)
    return value


def available_memory() -> int:
    """Bytes of memory available to a new allocation: ``MemAvailable`` of /proc/meminfo, else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def check_texture_fits(size: int, available: int | None = None) -> int:
    """``size`` if a ``size``² UV bake fits in ``available`` bytes (default :func:`available_memory`), else
    :class:`InputError` naming the largest size that fits."""
    available = available_memory() if available is None else int(available)
    needed = size * size * BAKE_BYTES_PER_TEXEL
    if needed > available:
        largest = int((available / BAKE_BYTES_PER_TEXEL) ** 0.5)
        raise InputError(
            f"a {size}x{size} texture needs about {needed / 2**30:.1f} GiB to bake; this machine has "
            f"{available / 2**30:.1f} GiB available.",
            fix=f"use --texture-size {max(16, largest // 256 * 256)} or smaller (or free memory).",
        )
    return size


OPTIONS: dict[str, Option] = {
    opt.key: opt
    for opt in (
        Option("preset", str, "quality/speed preset (see Presets)", choices=("draft", "standard", "high"),
               default="draft"),
        Option("texture", str, "per-vertex colours, or a UV atlas with a texture PNG", paths=("bake.texture",),
               choices=("vertex", "uv")),
        Option("texture_size", int, "texture side in pixels for texture uv (a size whose bake does not fit in the "
               "available memory is refused)", paths=("bake.texture_size",), minimum=16, maximum=16384,
               validate=check_texture_fits),
        Option("faces", int, "decimate the mesh to at most N faces (quadric decimation)",
               paths=("extract.target_faces", "gtr.target_faces"), minimum=4, unset="no decimation"),
        Option("fit_steps", int, "field-fit steps (fit method)", paths=("fit.steps",), minimum=1),
        Option("fit_seconds", float, "time limit of the field fit: it stops after S seconds even if steps remain, and "
               "the result then warns how many steps were done", paths=("fit.max_seconds",), positive=True,
               unset="no limit"),
        Option("mesh_resolution", int, "marching-cubes grid side", paths=("extract.resolution", "gtr.mesh_resolution"),
               minimum=16, maximum=1024, unset="model's"),
        Option("surface", str, "fit: how the mesh is taken from the field — fused: the views' depths fused into a "
               "distance (the most accurate outer surface of solid objects); density: an iso-surface of the density "
               "(keeps thin parts and the gaps between them, e.g. lego)", paths=("extract.surface",),
               choices=("fused", "density")),
        Option("keep_support", bool, "photos without masks: keep what the object stands on (a table top, a stand) "
               "where the bounds cut it, instead of removing it", paths=("segment.keep_support",)),
        Option("geometry_iterations", int, "geometry-refinement steps: the extracted mesh's vertices move so its "
               "renders match the views' masks and colours (fit method; 0 disables it)",
               paths=("geometry.iterations",), minimum=0),
        Option("inside_masks", float, "geometry refinement keeps every vertex within S pixels (of the working images) "
               "beyond every view's mask: no fat band along the silhouettes (renders with exact cameras: 0); where "
               "masks and poses disagree by a pixel or so (photographs) it costs coverage",
               paths=("geometry.inside_masks",), minimum=0, unset="not enforced"),
        Option("refine_iterations", int, "texture-refinement iterations (gtr: 50, as the official release)",
               paths=("refine.iterations", "gtr.refine.iterations"), minimum=0),
        Option("method", str, "gtr: the GTR network (needs a checkpoint); fit: per-scene fit, no weights; auto: gtr "
               "when a checkpoint is configured, else fit", choices=("auto", "gtr", "fit"), default="auto"),
        Option("checkpoint", str, "GTR weights: the official .pth or a converted .safetensors (in job.json: "
               "relative to the job file)", default="$GTR_CHECKPOINT", values="a file path", metavar="PATH"),
        Option("trust_checkpoint", bool, "allow full unpickling of a GTR checkpoint that holds more than tensors; "
               "this can run code stored in the file, so use it only for a file you trust", default=False),
        Option("polish_steps", int, "gtr: volume-rendering fit steps on the generated triplane before meshing; they "
               "train the triplane only, not the network's decoder MLPs",
               paths=("gtr.polish_steps",), minimum=0),
        Option("up_axis", str, "gtr: the scene's up axis (Blender: z; GTR camera folders: y)",
               paths=("gtr.rig.up_axis",), choices=("z", "y")),
        Option("device", str, "where to run: auto is CUDA when torch sees a GPU, else the CPU", default="auto",
               values="auto, cpu, cuda or cuda:N", validate=_check_device, metavar="DEVICE"),
        Option("threads", int, "CPU threads for torch", minimum=1, maximum=1024,
               unset="the CPUs this process may use (affinity, cgroup quota), less those other processes keep busy"),
        Option("mask_source", str, "where each view's mask comes from (see Masks)", flag=False,
               choices=("auto", "alpha", "file", "color_key", "none"), default="auto"),
        Option("background", object, "solid background colour for mask_source color_key", flag=False,
               values='[r, g, b] in 0..1, [r, g, b] ints in 0..255, or "#rrggbb"', validate=_check_background),
        Option("background_tolerance", float, "colour distance (0..1 units) within which a pixel is background",
               flag=False, positive=True, default=0.1),
        Option("depth_scale", float, "world units per step of a 16-bit depth PNG", flag=False, positive=True,
               default=0.001),
    )
}
"""Every option, in the order of ``--help`` and the README."""

CONFIG_KEYS = tuple(key for key, opt in OPTIONS.items() if opt.paths)
"""Options that set config fields (the keyword arguments of ``pipeline.configure``)."""


@dataclass(frozen=True)
class CheckedOptions:
    """Options after :func:`check_options`: the values to use and the warnings about ignored keys."""

    values: dict
    """Known options, converted to their types; unknown keys are dropped."""
    warnings: list[str]
    """One line per unknown key, naming the closest known key and all known keys."""


def check_options(options: dict, where: str = "options") -> CheckedOptions:
    """Check every known option's value (raises :class:`InputError`); unknown keys become warnings.

    ``None`` values are dropped (they mean "not given"). ``where`` names the source in warnings.
    """
    values, warnings = {}, []
    for key, value in options.items():
        if value is None:
            continue
        opt = OPTIONS.get(key)
        if opt is None:
            close = difflib.get_close_matches(str(key), list(OPTIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            warnings.append(f"unknown option '{key}' in {where} is ignored{hint}; known options: {', '.join(OPTIONS)}.")
            continue
        values[key] = opt.check(value)
    return CheckedOptions(values, warnings)


def get_path(config, path: str):
    """The value at a dotted path of a (nested) dataclass, e.g. ``get_path(cfg, "fit.steps")``."""
    for name in path.split("."):
        config = getattr(config, name)
    return config


def set_path(config, path: str, value):
    """A copy of ``config`` with the dotted ``path`` set to ``value`` (``dataclasses.replace`` at each level)."""
    head, _, rest = path.partition(".")
    if not rest:
        return replace(config, **{head: value})
    return replace(config, **{head: set_path(getattr(config, head), rest, value)})


def apply(base, options: dict):
    """``base`` with each config option's value written to its paths (None keeps the base's value).

    Values are checked first; a key that is not a config option is a ``TypeError`` (a programming error).
    """
    config = base
    for key, value in options.items():
        if key not in CONFIG_KEYS:
            raise TypeError(f"{key!r} is not a config option; config options: {', '.join(CONFIG_KEYS)}")
        if value is None:
            continue
        value = OPTIONS[key].check(value)
        for path in OPTIONS[key].paths:
            config = set_path(config, path, value)
    return config


# ------------------------------------------------------------------------------------------- the command line


def add_flags(parser) -> None:
    """Add a flag for every option that has one (default None: "not given", so the job's value stays)."""
    for opt in OPTIONS.values():
        if not opt.flag:
            continue
        default = " (default: the preset's)" if opt.paths else (f" (default: {opt.default})" if opt.default else "")
        if opt.kind is bool:
            parser.add_argument(opt.flag_name, action="store_true", default=None, help=opt.help)
            continue
        metavar = opt.metavar or (None if opt.choices else ("N" if opt.kind is int else "S"))
        parser.add_argument(
            opt.flag_name,
            type=opt.kind,
            choices=opt.choices or None,
            default=None,
            metavar=metavar,
            help=opt.help + default,
        )


def from_args(args) -> dict:
    """The options given on the command line (flags left out are absent), checked."""
    given = {key: getattr(args, key) for key, opt in OPTIONS.items() if opt.flag and getattr(args, key) is not None}
    return check_options(given, "the command line").values


# ---------------------------------------------------------------------------------------------- the README


def _text(value, opt: Option) -> str:
    if value is None:
        return opt.unset
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_text(opt: Option, presets: dict) -> str:
    """The option's default: the presets' values at its paths (``a / b / c`` when they differ), else ``default``."""
    if not opt.paths:
        return _text(opt.default, opt)
    per_path = []
    for path in opt.paths:
        cells = [_text(get_path(cfg, path), opt) for cfg in presets.values()]
        per_path.append(cells[0] if len(set(cells)) == 1 else " / ".join(cells))
    if len(set(per_path)) == 1:
        return per_path[0]
    return "; ".join(f"{path.split('.')[0]}: {text}" for path, text in zip(opt.paths, per_path))


TABLE_START = "<!-- options table: generated by `python -m backend.options`; tests/test_options.py checks it -->"
TABLE_END = "<!-- end of options table -->"


def markdown_table(presets: dict) -> str:
    """The README's options table (between :data:`TABLE_START` and :data:`TABLE_END`)."""
    names = " / ".join(presets)
    lines = [
        f"| `options` key | flag | value | default ({names}) | meaning |",
        "|---|---|---|---|---|",
    ]
    for opt in OPTIONS.values():
        flag = f"`{opt.flag_name}`" if opt.flag else "job.json only"
        lines.append(f"| `{opt.key}` | {flag} | {opt.rule()} | {default_text(opt, presets)} | {opt.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from .pipeline import PRESETS

    print(TABLE_START)
    print(markdown_table(PRESETS))
    print(TABLE_END)
