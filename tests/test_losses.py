"""Losses against MATH.md."""

from __future__ import annotations

import math

import pytest
import torch

from mrgrpo.losses import (clipped_policy_loss, flow_matching_loss, mean_kl, mix_sft_loss, ratio_stats,
                           sample_flow_sigmas, velocity_kl)


def test_on_policy_ratio_one_and_loss_minus_mean_advantage():
    lp = torch.randn(8)
    adv = torch.randn(8)
    loss = clipped_policy_loss(lp, lp.clone(), adv, 1e-4)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-7)
    stats = ratio_stats(lp, lp.clone(), 1e-4)
    assert stats["ratio/mean"] == 1.0 and stats["clip_frac"] == 0.0


@pytest.mark.parametrize("adv_sign", [1.0, -1.0])
@pytest.mark.parametrize("delta", [0.5, -0.5])
def test_clipping_stops_the_gradient_in_the_right_direction(adv_sign, delta):
    e = 0.1
    lp = torch.tensor([delta], requires_grad=True)
    old = torch.zeros(1)
    adv = torch.tensor([adv_sign])
    clipped_policy_loss(lp, old, adv, e).backward()
    ratio = math.exp(delta)
    # gradient is zero exactly when the clipped term is the max: A>0 and ratio>1+e, or A<0 and ratio<1-e
    should_be_zero = (adv_sign > 0 and ratio > 1 + e) or (adv_sign < 0 and ratio < 1 - e)
    if should_be_zero:
        assert lp.grad.item() == 0.0
    else:
        assert lp.grad.item() == pytest.approx(-adv_sign * ratio, rel=1e-6)


def test_asymmetric_clip():
    old = torch.zeros(2)
    lp = torch.log(torch.tensor([1.15, 0.85]))
    adv = torch.tensor([1.0, -1.0])
    # (low 0.1, high 0.2): 1.15 inside for A>0 (no clip), 0.85 outside low bound for A<0 -> clipped to 0.9
    loss = clipped_policy_loss(lp, old, adv, (0.1, 0.2))
    expected = (max(-1.15, -1.15) + max(0.85, 0.9)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_kl_terms():
    v = torch.randn(3, 2, 4, 4)
    assert torch.equal(velocity_kl(v, v.clone()), torch.zeros(3))
    w = v + 0.5
    assert torch.allclose(velocity_kl(v, w), torch.full((3,), 0.25))
    std = torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(velocity_kl(v, w, std), 0.25 / (2 * std**2 + 1e-7))
    torch.testing.assert_close(mean_kl(v, w, std.view(3, 1, 1, 1)), 0.25 / (2 * std**2 + 1e-7))


def test_flow_matching_loss_formula():
    g = torch.Generator().manual_seed(0)
    v, x0, eps = (torch.randn(4, 3, 2, 2, generator=g) for _ in range(3))
    per_image = [((v[i] - (eps[i] - x0[i])) ** 2).mean().item() for i in range(4)]
    assert flow_matching_loss(v, x0, eps).item() == pytest.approx(sum(per_image) / 4, rel=1e-6)


def test_shifted_sigma_law():
    s = sample_flow_sigmas(200_000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32 and s.min() >= 0 and s.max() < 1
    # CDF: P(S <= t) = P(U <= t / (3 - 2t))
    for t in (0.2, 0.5, 0.75, 0.9):
        assert (s <= t).float().mean().item() == pytest.approx(t / (3 - 2 * t), abs=0.005)


def test_mix_sft_loss():
    a, b = torch.tensor(2.0), torch.tensor(10.0)
    assert mix_sft_loss(a, b, 1e-1).item() == pytest.approx(0.9 * 2 + 0.1 * 10)
    assert mix_sft_loss(a, None, 1e-1).item() == 2.0
