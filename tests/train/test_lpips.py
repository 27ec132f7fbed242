"""LPIPS from a local file: the lpips package's key names and shapes, distance properties, and its use in training.
(No official LPIPS weights exist on this machine, so the numbers are not compared with the lpips package's.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from backend.errors import InputError
from backend.train.config import PRESETS
from backend.train.engine import train
from backend.train.lpips import LPIPS, load_lpips

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "procedural_tiny"


def random_weights(path: Path, aliases: bool = True) -> Path:
    torch.manual_seed(0)
    state = LPIPS().state_dict()
    for key, value in state.items():
        if key.startswith("lin"):
            state[key] = value.abs()  # the learned LPIPS weights are non-negative
    if aliases:  # newer lpips versions also list lin0-4 under lins.0-4
        state.update({f"lins.{k}.model.1.weight": state[f"lin{k}.model.1.weight"] for k in range(5)})
    torch.save(state, path)
    return path


def test_the_state_dict_has_the_lpips_packages_names_and_shapes():
    state = LPIPS().state_dict()
    assert len(state) == 13 * 2 + 5 + 2  # 13 convolutions (weight, bias), 5 linear heads, shift and scale
    assert tuple(state["net.slice1.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["net.slice2.5.weight"].shape) == (128, 64, 3, 3)
    assert tuple(state["net.slice3.14.weight"].shape) == (256, 256, 3, 3)
    assert tuple(state["net.slice5.28.weight"].shape) == (512, 512, 3, 3)
    assert tuple(state["lin4.model.1.weight"].shape) == (1, 512, 1, 1)
    assert torch.allclose(state["scaling_layer.shift"].flatten(), torch.tensor([-0.030, -0.088, -0.188]))


def test_distance_properties_and_gradients(tmp_path):
    net = load_lpips(random_weights(tmp_path / "lpips.pth"))
    x = torch.rand(2, 3, 32, 32)
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert torch.equal(net(x, x), torch.zeros(2))
    d = net(x, y)
    assert (d > 0).all() and torch.allclose(d, net(y, x))
    d.sum().backward()
    assert y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters())


def test_a_wrong_file_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, bad)
    with pytest.raises(InputError, match="not an LPIPS"):
        load_lpips(bad)
    with pytest.raises(InputError, match="do not exist"):
        load_lpips(tmp_path / "missing.pth")


def test_training_uses_lpips_when_given_its_weights(tmp_path):
    weights = random_weights(tmp_path / "lpips.pth")
    config = replace(PRESETS["tiny"], steps=2, lpips_weights=str(weights))
    train(FIXTURE, tmp_path / "run", config, device="cpu")
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["lpips"] > 0 and "1-ssim" not in r for r in rows)
