"""The FLOP accounting of benchmarks/flops.py against a hand count on a plain linear layer and a tiny DiT."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import mfu, spec_peak_tflops, step_flops, velocity_flops_per_image  # noqa: E402


class _Cond:
    def select(self, idx):
        return self


class _LinearPolicy:
    def __init__(self):
        self.lin = torch.nn.Linear(64, 32, bias=False)

    def velocity(self, x, sigma, cond):
        return self.lin(x.flatten(1))


def test_flops_of_a_linear_velocity_and_the_step_totals():
    import contextlib

    f = velocity_flops_per_image(
        _LinearPolicy(), torch.randn(4, 4, 4, 4), torch.rand(4), _Cond(), contextlib.nullcontext
    )
    assert f == 2 * 64 * 32  # one image: a [1, 64] x [64, 32] matmul
    t = step_flops(f, images=8, num_steps=10, trained_steps=6, cfg=True, beta=0.1)
    assert t["rollout"] == f * 8 * 10 * 2
    assert t["train"] == f * 8 * 6 * 2 * 4  # fwd + bwd (3) + reference forward (1)
    assert step_flops(f, images=8, num_steps=10, trained_steps=6, cfg=False, beta=0.0)["train"] == f * 8 * 6 * 3
    m = mfu({"rollout": 1e12, "train": 2e12}, {"rollout": 2.0, "train": 1.0}, peak_tflops=1.0)
    assert m == {"rollout": 0.5, "train": 2.0}
    assert spec_peak_tflops("NVIDIA H200") == pytest.approx(989.4) and spec_peak_tflops("Mystery GPU") is None


def test_flops_of_the_tiny_dit_scale_with_tokens(tmp_path, monkeypatch):
    import contextlib

    from mrgrpo.registry import POLICIES

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    policy = POLICIES.build("sd3-tiny").eval()
    cond = policy.encode(["a red square"]).cond
    small = velocity_flops_per_image(policy, torch.randn(1, 16, 4, 4), torch.rand(1), cond, contextlib.nullcontext)
    large = velocity_flops_per_image(policy, torch.randn(1, 16, 8, 8), torch.rand(1), cond, contextlib.nullcontext)
    assert 0 < small < large  # 16 instead of 4 image tokens (the tiny model's text tokens dominate both)
