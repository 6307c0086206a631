"""CUDA check of ``rl.reference_device: cpu`` (`make test-gpu`; skipped without a GPU): the frozen reference
DiT of a full fine-tune stays on the CPU, the policy's DiT on the GPU, and the KL of MR-GRPO steps in
bf16 equals that of the same-device reference up to bf16 rounding (CPU and GPU kernels round differently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrgrpo.config import load_recipe

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]


def test_reference_on_the_cpu_gives_the_same_kl_on_cuda(tmp_path, monkeypatch):
    from mrgrpo.grpo import GRPOTrainer

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    kls = {}
    for where in ("same", "cpu"):
        cfg = load_recipe(
            REPO / "recipes" / "smoke_pixel.yaml",
            [
                f"output_dir={tmp_path}/{where}",
                "logging.progress_bar=false",
                "logging.tensorboard=false",
                "data.sources.1.weight=0",
                "eval.sources=[]",
                "rl.num_steps=6",
                "rl.beta=0.5",
                "train.mixed_precision=bf16",
                f"rl.reference_device={where}",
            ],
        )
        tr = GRPOTrainer(cfg)
        assert tr.device.type == "cuda" and next(tr.policy.transformer.parameters()).is_cuda
        kls[where] = [tr.run_phases(step)[3]["loss/kl"] for step in (1, 2)]
        devices = {p.device.type for p in tr.policy._ref_transformer.parameters()}
        assert devices == ({"cpu"} if where == "cpu" else {"cuda"})
        tr.close()
    assert kls["same"][1] > 0
    assert kls["cpu"][1] == pytest.approx(kls["same"][1], rel=2e-2)
