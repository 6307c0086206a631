"""``rl.reference_device: cpu``: the frozen reference DiT of a full fine-tune pinned to the CPU.

On a CPU-only machine the policy is moved to the ``meta`` device (weights without data) after the
reference copy was pinned: the copy must stay on the CPU, every tensor reaching the policy inside
``reference()`` must be on the CPU (tests/device_audit.py), and the reference velocity (and so the KL)
must equal the one of a same-device reference bit for bit. The trainer path is checked on the tiny
DeepGen: ``loss/kl`` of one MR-GRPO step is the same with the reference on ``cpu`` and ``same``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from device_audit import DeviceAudit

from mrgrpo.losses import velocity_kl
from mrgrpo.registry import POLICIES

TINY = sorted(n for n in POLICIES.names() if n.endswith("-tiny"))
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", TINY)
def test_pinned_reference_stays_on_the_cpu_and_matches_the_same_device_one(build, name, perturb):
    same, pinned = build(name), build(name)
    for policy in (same, pinned):
        policy.set_stage("rl")
    same.enable_reference()
    pinned.enable_reference(device="cpu")
    cond = same.encode(["a red square"]).cond.repeat(2)
    x, s = same.init_noise(2, 64, 64, torch.Generator().manual_seed(0)), torch.tensor([0.7, 0.4])
    perturb(same)
    perturb(pinned)
    with torch.no_grad():
        v_trained = same.velocity(x, s, cond)
        with same.reference():
            v_ref = same.velocity(x, s, cond)
    assert not torch.allclose(v_trained, v_ref)  # the perturbation moved the trained DiT away from the reference

    pinned.to("meta")  # stands in for an accelerator: the trained weights leave, the pinned copy must not
    assert pinned.device.type == "meta" and pinned.reference_device == torch.device("cpu")
    assert {p.device.type for p in pinned._ref_transformer.parameters()} == {"cpu"}
    audit = DeviceAudit("cpu")
    audit.watch(pinned, methods=("velocity",))
    with torch.no_grad(), pinned.reference():
        v_pinned = pinned.velocity(x, s, cond.to(pinned.reference_device))
    assert audit.checked_inputs > 0 and audit.violations == []
    assert {p.device.type for p in pinned._ref_transformer.parameters()} == {"cpu"}  # reference() did not move it
    assert torch.equal(v_pinned, v_ref)
    std = torch.tensor([0.3, 0.2]).view(2, 1, 1, 1)
    assert torch.equal(velocity_kl(v_trained, v_pinned, std), velocity_kl(v_trained, v_ref, std))


def test_trainer_kl_is_the_same_with_the_reference_on_the_cpu(tmp_path, monkeypatch):
    from mrgrpo.config import load_recipe
    from mrgrpo.grpo import GRPOTrainer

    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    metrics = {}
    for where in ("same", "cpu"):
        cfg = load_recipe(
            REPO / "recipes" / "smoke_pixel.yaml",
            [
                f"output_dir={tmp_path}/{where}",
                "logging.progress_bar=false",
                "logging.tensorboard=false",
                "data.sources.1.weight=0",
                "eval.sources=[]",
                "rl.num_steps=4",
                "rl.beta=0.5",
                f"rl.reference_device={where}",
            ],
        )
        tr = GRPOTrainer(cfg)
        assert (tr.policy._ref_device is not None) == (where == "cpu")
        # two steps: the first update moves the weights, so the second step's KL is not 0
        metrics[where] = [tr.run_phases(step)[3] for step in (1, 2)]
        tr.close()
    assert metrics["same"][1]["loss/kl"] > 0
    for a, b in zip(metrics["same"], metrics["cpu"]):
        assert a["loss/kl"] == b["loss/kl"] and a["loss/policy"] == b["loss/policy"]
