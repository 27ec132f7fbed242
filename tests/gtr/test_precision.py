"""The gtr method's TF32 policy: one context manager sets both CUDA flags and restores them (checkable on CPU)."""

from __future__ import annotations

import pytest
import torch

from backend.gtr.precision import float32_precision
from backend.gtr.run import GTRSettings


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture()
def restore_flags():
    before = _flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_highest_turns_tf32_off_and_restores(restore_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with float32_precision("highest"):
        assert _flags() == (False, False)
    assert _flags() == (True, True)


def test_tf32_turns_it_on_and_restores_after_an_error(restore_flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults
    with pytest.raises(RuntimeError), float32_precision("tf32"):
        assert _flags() == (True, True)
        raise RuntimeError("stage failed")
    assert _flags() == (False, True)


def test_default_policy_and_unknown_value():
    assert GTRSettings().precision == "highest"
    with pytest.raises(ValueError, match="highest"), float32_precision("fp16"):
        pass
