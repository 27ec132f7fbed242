"""Checkpoint reading, checking and conversion (``backend.gtr.checkpoint``) on small real files.

The SMALL model's weights come from the parity fixture; the FULL model is only ever built on the meta device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from backend.errors import InputError
from backend.gtr.checkpoint import (
    FORMAT,
    Weights,
    build_model,
    check_weights,
    config_name,
    expected_shapes,
    infer_config,
    read_checkpoint,
    save_official,
    save_weights,
)
from backend.gtr.config import FULL, SMALL, ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def small_parts() -> dict[str, dict[str, torch.Tensor]]:
    """The SMALL model's official state dicts, from ``pipeline.generator.*`` / ``pipeline.field.*`` of the fixture."""
    flat = load_file(str(DATA / "parity_small.safetensors"))
    parts: dict[str, dict[str, torch.Tensor]] = {"generator": {}, "field": {}}
    for key, tensor in flat.items():
        head, _, rest = key.partition(".")
        part, _, name = rest.partition(".")
        if head == "pipeline" and part in parts:
            parts[part][name] = tensor
    return parts


def write_pickle(path: Path, generator: dict, field: dict, **extra) -> Path:
    torch.save({"pipeline": {"generator": generator, "field": field}, **extra}, path)
    return path


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == torch.float32, key
        assert torch.equal(bits(got[key]), bits(want[key])), key


def test_full_spec_matches_official_key_list():
    official = json.loads((DATA / "state_dict_full.json").read_text())["pipeline"]
    spec = expected_shapes(FULL)
    for part in ("generator", "field"):
        assert spec[part] == {k: tuple(v["shape"]) for k, v in official[part].items()}
    assert (len(spec["generator"]), len(spec["field"])) == (320, 15)


def test_infer_config_from_shapes(small_parts):
    full = {part: {k: torch.empty(s, device="meta") for k, s in shapes.items()}
            for part, shapes in expected_shapes(FULL).items()}
    assert infer_config(full["generator"], full["field"]) == FULL
    assert infer_config(small_parts["generator"], small_parts["field"], num_head_channels=32) == SMALL
    guessed = infer_config(small_parts["generator"], small_parts["field"])  # heads are invisible in the shapes
    assert (guessed.generator.num_heads, guessed.generator.num_head_channels) == (1, 64)
    assert config_name(guessed) == "custom"


def test_official_pickle_loads_into_the_model(tmp_path, small_parts):
    path = write_pickle(tmp_path / "ckpt.pth", small_parts["generator"], small_parts["field"])
    weights = read_checkpoint(path, config=SMALL)
    assert weights.config == SMALL and weights.source == str(path)
    generator, field = build_model(weights)
    assert not generator.training and not any(p.requires_grad for p in generator.parameters())
    assert_bit_equal(generator.state_dict(), small_parts["generator"])
    assert_bit_equal(field.state_dict(), small_parts["field"])


def test_bare_layout_and_folder_path(tmp_path, small_parts):
    torch.save(dict(small_parts), tmp_path / "full_checkpoint.pth")
    weights = read_checkpoint(tmp_path, config=SMALL)
    assert weights.source == str(tmp_path / "full_checkpoint.pth")
    assert weights.tensor_count == len(small_parts["generator"]) + len(small_parts["field"])


def test_pickle_with_other_objects_needs_trust(tmp_path, small_parts):
    path = write_pickle(tmp_path / "ckpt.pth", small_parts["generator"], small_parts["field"],
                        args=argparse.Namespace(lr=1e-4))
    with pytest.raises(InputError) as err:
        read_checkpoint(path, config=SMALL)
    message = str(err.value)
    assert "--trust-checkpoint" in message and "trust_checkpoint: true" in message
    assert "arbitrary code" in message and "argparse.Namespace" in message
    with pytest.warns(UserWarning, match="weights_only=False"):
        weights = read_checkpoint(path, trust=True, config=SMALL)
    assert_bit_equal(weights.generator, small_parts["generator"])


def test_mismatches_are_listed(tmp_path, small_parts):
    generator = dict(small_parts["generator"])
    del generator["attn_layers.1.norm2.bias"]
    generator["extra.weight"] = torch.zeros(2)
    field = dict(small_parts["field"])
    field["decoder.field.mlp_color.layers.3.bias"] = torch.zeros(4)
    path = write_pickle(tmp_path / "ckpt.pth", generator, field)
    with pytest.raises(InputError) as err:
        read_checkpoint(path, config=SMALL)
    message = str(err.value)
    assert "missing 1 key: generator.attn_layers.1.norm2.bias" in message
    assert "unexpected 1 key: generator.extra.weight" in message
    assert "field.decoder.field.mlp_color.layers.3.bias expected (3) got (4)" in message


def test_wrong_shape_found_with_an_inferred_config(tmp_path, small_parts):
    generator = dict(small_parts["generator"], **{"attn_layers.1.norm1.weight": torch.ones(65)})
    path = write_pickle(tmp_path / "ckpt.pth", generator, small_parts["field"])
    with pytest.raises(InputError, match=r"generator\.attn_layers\.1\.norm1\.weight expected \(64\) got \(65\)"):
        read_checkpoint(path)


def test_long_lists_are_cut(small_parts):
    weights = Weights(generator={}, field=dict(small_parts["field"]), config=SMALL, source="empty.pth")
    with pytest.raises(InputError, match=rf"missing {len(small_parts['generator'])} keys: .*\(and \d+ more\)"):
        check_weights(weights)


def test_non_float_and_non_finite_rejected(tmp_path, small_parts):
    field = dict(small_parts["field"], aabb=torch.tensor([-1, -1, -1, 1, 1, 1]))
    with pytest.raises(InputError, match=r"not floating-point 1 key: field\.aabb \(int64\)"):
        read_checkpoint(write_pickle(tmp_path / "int.pth", small_parts["generator"], field), config=SMALL)
    planes = small_parts["generator"]["planes"].clone()
    planes[0, 0, 0, 0, 0] = float("nan")
    generator = dict(small_parts["generator"], planes=planes)
    with pytest.raises(InputError, match=r"non-finite .*generator\.planes"):
        read_checkpoint(write_pickle(tmp_path / "nan.pth", generator, small_parts["field"]), config=SMALL)


def test_half_precision_becomes_float32(tmp_path, small_parts):
    half = {k: t.half() for k, t in small_parts["generator"].items()}
    weights = read_checkpoint(write_pickle(tmp_path / "half.pth", half, small_parts["field"]), config=SMALL)
    assert all(t.dtype == torch.float32 for t in weights.generator.values())


def test_official_safetensors_official_round_trip(tmp_path, small_parts):
    first = read_checkpoint(write_pickle(tmp_path / "in.pth", small_parts["generator"], small_parts["field"]),
                            config=SMALL)
    st = save_weights(first, tmp_path / "weights.safetensors")
    assert st.stat().st_mode & 0o777 == (tmp_path / "in.pth").stat().st_mode & 0o777  # as any new file (not 0600)
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT
    assert ModelConfig.from_dict(json.loads(meta["gtr_config"])) == SMALL
    middle = read_checkpoint(st)  # no config given: the file carries it
    assert middle.config == SMALL
    out = save_official(middle, tmp_path / "out.pth")
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert list(raw) == ["pipeline"] and list(raw["pipeline"]) == ["generator", "field"]
    assert_bit_equal(raw["pipeline"]["generator"], small_parts["generator"])
    assert_bit_equal(raw["pipeline"]["field"], small_parts["field"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth", "out.pth", "weights.safetensors"]  # no temp files
    with pytest.raises(InputError, match="FULL"):
        read_checkpoint(st, config=FULL)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="does not exist.*download") as err:
        read_checkpoint(tmp_path / "full_checkpoint.pth")
    assert str(tmp_path / "full_checkpoint.pth") in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="neither a torch checkpoint nor a safetensors"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save({"model": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="no GTR generator/field weights"):
        read_checkpoint(tmp_path / "other.pth")


def run_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "backend", *map(str, args)], check=False, cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_convert_checkpoint(tmp_path, small_parts):
    source = save_weights(Weights(small_parts["generator"], small_parts["field"], SMALL, "fixture"),
                          tmp_path / "small.safetensors")
    done = run_cli("convert-checkpoint", source, tmp_path / "small.pth")
    assert done.returncode == 0, done.stderr
    assert "official torch pickle" in done.stderr and "config SMALL" in done.stderr
    weights = read_checkpoint(tmp_path / "small.pth", config=SMALL)
    assert_bit_equal(weights.generator, small_parts["generator"])

    failed = run_cli("convert-checkpoint", tmp_path / "absent.pth", tmp_path / "out.safetensors")
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: checkpoint ") and "does not exist" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "out.safetensors").exists()
