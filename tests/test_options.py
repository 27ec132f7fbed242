"""The options registry (backend/options.py): one definition per option, from which the CLI flags, the config
writes, the checks and the README's table come; plus the docstring and ``fix=`` rules for every config and error."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from backend import options as options_module
from backend.cli import build_parser
from backend.errors import InputError
from backend.options import CONFIG_KEYS, OPTIONS, check_options, check_texture_fits, get_path, markdown_table
from backend.pipeline import PRESETS, PipelineConfig, config_from_options, configure, resolve_device

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "backend"


def test_readme_options_table_is_the_registry():
    """The README's table is exactly what the registry generates: a key, flag, check, default or help text changed
    in one place and not the other fails here."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = text.index(options_module.TABLE_START), text.index(options_module.TABLE_END)
    table = text[start + len(options_module.TABLE_START) : end].strip()
    assert table == markdown_table(PRESETS), "regenerate it: python -m backend.options"
    keys = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
    assert keys == list(OPTIONS)


@pytest.mark.parametrize("command", ["reconstruct", "demo", "eval"])
def test_cli_flags_are_the_registry(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {s for a in sub.choices[command]._actions for s in a.option_strings if s.startswith("--")}
    own = {"reconstruct": {"--output", "--formats", "--bounds"}, "demo": {"--output", "--size"},
           "eval": {"--output", "--train-views", "--test-views", "--volume-views", "--gt-mesh"}}[command]
    registry = {opt.flag_name for opt in OPTIONS.values() if opt.flag}
    assert flags == registry | own | {"--help", "--quiet"}


def test_preset_names_and_methods_come_from_one_place():
    from backend.pipeline import METHODS

    assert tuple(PRESETS) == OPTIONS["preset"].choices
    assert METHODS == OPTIONS["method"].choices


def _other_value(opt, current):
    """A valid value different from ``current`` for the option."""
    if opt.choices:
        return next(c for c in opt.choices if c != current)
    if opt.kind is bool:
        return not current
    if opt.kind is int:
        return int(opt.minimum or 0) + 17 if current != int(opt.minimum or 0) + 17 else int(opt.minimum or 0) + 18
    return 7.5


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_configure_writes_every_path(key):
    """``configure`` (and ``config_from_options``) write each config option to all of its registry paths."""
    opt = OPTIONS[key]
    base = PRESETS["standard"]
    value = _other_value(opt, get_path(base, opt.paths[0]))
    configured = configure(base, **{key: value})
    for path in opt.paths:
        assert get_path(configured, path) == value, path
    assert get_path(config_from_options({"preset": "standard", key: value}), opt.paths[0]) == value
    untouched = {f.name for f in dataclasses.fields(PipelineConfig)} - {p.split(".")[0] for p in opt.paths}
    for name in untouched:
        assert getattr(configured, name) == getattr(base, name), name


def test_faces_sets_both_methods():
    config = configure(PRESETS["draft"], faces=5000)
    assert (config.extract.target_faces, config.gtr.target_faces) == (5000, 5000)
    with pytest.raises(TypeError, match="not a config option"):
        configure(PRESETS["draft"], fit_stepz=5)


@pytest.mark.parametrize(
    "key, value, phrase",
    [
        ("faces", -5, "integer ≥ 4"),
        ("faces", 2.5, "must be an integer"),
        ("texture_size", 0, "from 16 to 16384"),
        ("texture_size", 100000, "from 16 to 16384"),
        ("fit_steps", 0, "integer ≥ 1"),
        ("fit_steps", True, "must be an integer"),
        ("fit_steps", "100", "must be an integer"),
        ("fit_seconds", 0, "number > 0"),
        ("fit_seconds", float("nan"), "must be a number"),
        ("faces", float("inf"), "must be an integer"),
        ("mesh_resolution", 8, "from 16 to 1024"),
        ("refine_iterations", -1, "integer ≥ 0"),
        ("polish_steps", -1, "integer ≥ 0"),
        ("texture", "png", "unknown texture"),
        ("preset", "best", "unknown preset"),
        ("up_axis", "x", "unknown up_axis"),
        ("trust_checkpoint", "yes", "true or false"),
        ("device", "cuda:abc", "unknown device"),
        ("device", "gpu", "unknown device"),
        ("mask_source", "magic", "unknown mask_source"),
        ("background", "#12", "background colour"),
        ("background_tolerance", 0, "number > 0"),
        ("depth_scale", -1, "number > 0"),
    ],
)
def test_every_option_is_range_checked(key, value, phrase):
    with pytest.raises(InputError, match=re.escape(phrase)) as info:
        check_options({key: value})
    assert info.value.fix


def test_good_values_are_converted():
    values = check_options({"faces": 5000.0, "fit_seconds": 3, "texture": "uv", "background": "#ffffff"}).values
    assert values == {"faces": 5000, "fit_seconds": 3.0, "texture": "uv", "background": "#ffffff"}
    assert type(values["faces"]) is int and type(values["fit_seconds"]) is float


def test_unknown_key_warns_with_the_closest_key():
    checked = check_options({"fit_stepz": 5, "faces": 100, "zzz": 1}, "job.json options")
    assert checked.values == {"faces": 100}
    typo, other = checked.warnings
    assert "'fit_stepz' in job.json options" in typo and "did you mean 'fit_steps'?" in typo
    assert "known options: " + ", ".join(OPTIONS) in typo
    assert "'zzz'" in other and "did you mean" not in other


def test_texture_that_does_not_fit_in_memory(monkeypatch):
    """Bake memory measured on this project's CPU path: 385 bytes per texel at 1024² (peak RSS +385 MB) and 328 at
    2048² (+1311 MB); the registry assumes 400."""
    gib = 2**30
    assert check_texture_fits(4096, available=16 * gib) == 4096  # 4096² × 400 B = 6.3 GiB
    with pytest.raises(InputError, match="needs about 25.0 GiB") as info:
        check_texture_fits(8192, available=16 * gib)  # 8192² × 400 B = 25.0 GiB
    suggested = int(re.search(r"--texture-size (\d+)", info.value.fix).group(1))
    assert suggested == 6400  # the largest multiple of 256 that fits in 16 GiB at 400 B per texel
    assert check_texture_fits(suggested, available=16 * gib) == suggested
    assert 0 < options_module.available_memory() < 2**50  # read from /proc/meminfo (or sysconf)
    monkeypatch.setattr(options_module, "available_memory", lambda: 16 * gib)  # the registry's check uses it
    with pytest.raises(InputError, match="16.0 GiB available"):
        check_options({"texture_size": 8192})
    assert check_options({"texture_size": 4096}).values == {"texture_size": 4096}


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'cuda:abc'") as info:
        resolve_device("cuda:abc")
    assert "cuda:N" in info.value.fix
    count = torch.cuda.device_count()
    with pytest.raises(InputError, match=f"cuda:{count}") as info:
        resolve_device(f"cuda:{count}")  # one past the last GPU: without CUDA, any cuda:N
    expected = "--device cpu" if count == 0 else f"cuda:{count - 1}"
    assert expected in info.value.fix


# -------------------------------------------------------------------------------------------- source-level rules


def _config_classes() -> dict[str, tuple[Path, ast.ClassDef]]:
    found = {}
    for path in sorted(BACKEND.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Config", "Settings")):
                found[node.name] = (path, node)
    return found


def _reachable(cls, seen: set) -> set:
    """``cls`` and every dataclass type its fields hold (the PipelineConfig tree)."""
    if not dataclasses.is_dataclass(cls) or cls in seen:
        return seen
    seen.add(cls)
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            _reachable(type(f.default_factory()), seen)
        elif dataclasses.is_dataclass(f.default):
            _reachable(type(f.default), seen)
    return seen


def test_every_config_field_has_a_docstring():
    """Each field of every config dataclass (the PipelineConfig tree, MarchingCubesConfig, SceneConfig, the GTR
    model configs, ...) is followed by a one-line docstring in the source."""
    from backend.gtr.config import ModelConfig
    from backend.marching_cubes import MarchingCubesConfig
    from backend.synthetic import SceneConfig

    classes = _config_classes()
    tree = {c.__name__ for c in _reachable(PipelineConfig, set())}
    assert tree <= set(classes), tree - set(classes)
    assert {"PipelineConfig", "FitConfig", "FieldConfig", "RenderConfig", "GTRSettings", "RigConfig"} <= tree
    missing = []
    for name, (path, node) in classes.items():
        for i, statement in enumerate(node.body):
            if isinstance(statement, ast.AnnAssign):
                after = node.body[i + 1] if i + 1 < len(node.body) else None
                documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                if not (documented and isinstance(after.value.value, str) and after.value.value.strip()):
                    missing.append(f"{path.relative_to(REPO)}:{statement.lineno} {name}.{statement.target.id}")
    assert not missing, "fields without a docstring:\n" + "\n".join(missing)
    outside_the_tree = {c.__name__ for c in (MarchingCubesConfig, SceneConfig, ModelConfig)}
    assert outside_the_tree <= set(classes) and not outside_the_tree & tree


def test_every_input_error_says_how_to_fix_it():
    """Every ``InputError(...)`` raised in backend/ passes a non-empty ``fix=``."""
    missing = []
    for path in sorted(BACKEND.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "InputError":
                fix = next((k.value for k in node.keywords if k.arg == "fix"), None)
                if fix is None or (isinstance(fix, ast.Constant) and not fix.value):
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not missing, "InputError without fix=:\n" + "\n".join(missing)
