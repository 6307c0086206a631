"""Losses (mrgrpo.losses) against shared/MATH.md, expected values computed by hand or by loops."""

from __future__ import annotations

import math

import pytest
import torch

from mrgrpo.losses import (clipped_policy_loss, flow_matching_loss, grpo_step_loss, mean_kl, mix_sft_loss,
                           ratio_stats, sample_flow_sigmas, velocity_kl)


def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(16, generator=g) * 100  # large log-probs: exp(lp - old) must still be exactly 1
    lp = old.clone().requires_grad_(True)
    adv = torch.randn(16, generator=g)
    loss = clipped_policy_loss(lp, old, adv, 1e-4)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-7)
    loss.backward()
    # d/dlp of -A * exp(lp - old) at ratio 1, averaged over the batch: -A / B
    torch.testing.assert_close(lp.grad, -adv / 16)
    stats = ratio_stats(lp, old, 1e-4)
    assert stats["ratio/mean"] == 1.0 and stats["ratio/min"] == 1.0 and stats["ratio/max"] == 1.0
    assert stats["clip_frac"] == 0.0


def expected_grad(delta, adv, low, high):
    """d loss / d log_prob_i by the case analysis of max(-A r, -A clip(r)) (batch mean over n)."""
    n = len(delta)
    out = []
    for d, a in zip(delta, adv):
        r = math.exp(d)
        frozen = (a > 0 and r > 1 + high) or (a < 0 and r < 1 - low)
        out.append(0.0 if frozen else -a * r / n)
    return torch.tensor(out)


def test_clipping_stops_the_gradient_in_the_right_direction():
    e = 0.1
    # ratios e^delta: 1.65 (> 1 + e), 1.05 (inside), 0.61 (< 1 - e), each with A > 0 and A < 0
    delta = [0.5, 0.05, -0.5, 0.5, 0.05, -0.5]
    adv = [1.0, 1.0, 1.0, -2.0, -2.0, -2.0]
    lp = torch.tensor(delta, requires_grad=True)
    loss = clipped_policy_loss(lp, torch.zeros(6), torch.tensor(adv), e)
    loss.backward()
    grad = lp.grad
    assert grad[0] == 0.0  # A > 0, ratio > 1 + e: clipped, no push further up
    assert grad[1] < 0 and grad[2] < 0  # A > 0: inside or below 1 - e: the loss still pulls the ratio up
    assert grad[5] == 0.0  # A < 0, ratio < 1 - e: clipped
    assert grad[3] > 0 and grad[4] > 0  # A < 0: above 1 + e or inside: still pushed down
    torch.testing.assert_close(grad, expected_grad(delta, adv, e, e))
    # value: mean of max(-A r, -A clip(r, 0.9, 1.1))
    r = [math.exp(d) for d in delta]
    value = sum(max(-a * x, -a * min(max(x, 0.9), 1.1)) for a, x in zip(adv, r)) / 6
    assert loss.item() == pytest.approx(value, rel=1e-6)


def test_asymmetric_clip_range():
    low, high = 0.1, 0.2
    # ratios 1.15 and 1.25 with A > 0 (1.15 inside 1 + high, 1.25 beyond); 0.85 and 0.95 with A < 0
    # (0.85 below 1 - low, 0.95 inside)
    ratios = [1.15, 1.25, 0.85, 0.95]
    adv = [1.0, 1.0, -1.0, -1.0]
    lp = torch.log(torch.tensor(ratios)).requires_grad_(True)
    loss = clipped_policy_loss(lp, torch.zeros(4), torch.tensor(adv), (low, high))
    expected = (-1.15 + -1.2 + 0.9 + 0.95) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert lp.grad[1] == 0.0 and lp.grad[2] == 0.0
    torch.testing.assert_close(lp.grad, expected_grad([math.log(r) for r in ratios], adv, low, high))
    # with a symmetric 0.1 the 1.15 sample is clipped too: the asymmetric high bound is honoured
    sym = clipped_policy_loss(torch.log(torch.tensor(ratios)), torch.zeros(4), torch.tensor(adv), 0.1)
    assert sym.item() == pytest.approx((-1.1 + -1.1 + 0.9 + 0.95) / 4, abs=1e-6)
    stats = ratio_stats(torch.log(torch.tensor(ratios)), torch.zeros(4), (low, high))
    assert stats["clip_frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        clipped_policy_loss(lp, torch.zeros(4), torch.tensor(adv), -0.1)


def mse_loop(a, b):
    return torch.tensor([((a[i].double() - b[i].double()) ** 2).sum().item() / a[i].numel() for i in range(a.shape[0])],
                        dtype=torch.float64)


def test_velocity_kl():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 2, 4, 4, generator=g)
    assert torch.equal(velocity_kl(v, v.clone()), torch.zeros(3))
    assert torch.equal(velocity_kl(v, v.clone(), torch.tensor([0.1, 0.2, 0.3])), torch.zeros(3))
    w = v + 0.3 * torch.randn(3, 2, 4, 4, generator=g)
    msd = mse_loop(v, w)
    torch.testing.assert_close(velocity_kl(v, w).double(), msd, rtol=1e-5, atol=1e-7)
    std = [0.1, 0.2, 0.3]
    expected = torch.tensor([msd[i].item() / (2 * std[i] ** 2 + 1e-7) for i in range(3)], dtype=torch.float64)
    for s in (torch.tensor(std), torch.tensor(std).view(3, 1, 1, 1)):
        torch.testing.assert_close(velocity_kl(v, w, s).double(), expected, rtol=1e-5, atol=1e-7)
    # a float std applies to every sample
    torch.testing.assert_close(velocity_kl(v, w, 0.2).double(), msd / (2 * 0.04 + 1e-7), rtol=1e-5, atol=1e-7)
    # std -> 0 stays finite (the 1e-7)
    assert torch.isfinite(velocity_kl(v, w, 0.0)).all()
    torch.testing.assert_close(velocity_kl(v, w, 0.0).double(), msd / 1e-7, rtol=1e-5, atol=0)
    assert velocity_kl(v.bfloat16(), w.bfloat16()).dtype == torch.float32


def test_mean_kl():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(4, 3, 2, 2, generator=g)
    mu_ref = mu + 0.1 * torch.randn(4, 3, 2, 2, generator=g)
    std = torch.tensor([0.5, 0.4, 0.3, 0.2]).view(4, 1, 1, 1)
    expected = mse_loop(mu, mu_ref) / (2 * std.flatten().double() ** 2 + 1e-7)
    torch.testing.assert_close(mean_kl(mu, mu_ref, std).double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(mean_kl(mu, mu.clone(), std), torch.zeros(4))


def test_grpo_step_loss_adds_beta_times_mean_kl():
    lp, old, adv = torch.tensor([0.01, -0.02]), torch.zeros(2), torch.tensor([1.0, -1.0])
    kl = torch.tensor([2.0, 4.0])
    base = clipped_policy_loss(lp, old, adv, 0.1)
    assert grpo_step_loss(lp, old, adv, 0.1, kl, beta=0.5).item() == pytest.approx(base.item() + 0.5 * 3.0, abs=1e-6)
    assert grpo_step_loss(lp, old, adv, 0.1, kl, beta=0.0).item() == pytest.approx(base.item(), abs=1e-7)


def test_flow_matching_loss_formula():
    g = torch.Generator().manual_seed(0)
    v, x0, eps = (torch.randn(4, 3, 2, 2, generator=g) for _ in range(3))
    per_image = []
    for i in range(4):
        target = eps[i] - x0[i]
        per_image.append(sum(((v[i] - target) ** 2).flatten().tolist()) / v[i].numel())
    got = flow_matching_loss(v, x0, eps)
    assert got.ndim == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(sum(per_image) / 4, rel=1e-6)
    # the exact target gives 0; the wrong sign of the target (x0 - eps) does not
    assert flow_matching_loss(eps - x0, x0, eps).item() == 0.0
    assert flow_matching_loss(x0 - eps, x0, eps).item() > 1.0


def test_sample_flow_sigmas_follow_the_shifted_law():
    n = 200_000
    s = sample_flow_sigmas(n, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert s.shape == (n,) and s.dtype == torch.float32
    assert s.min().item() >= 0.0 and s.max().item() < 1.0
    # s = 3u / (1 + 2u) is increasing in u, so P(S <= t) = P(U <= t / (3 - 2t)) and the p-quantile
    # of S is 3p / (1 + 2p)
    sorted_s = torch.sort(s.double()).values
    grid = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    emp_cdf = torch.searchsorted(sorted_s, grid, right=True).double() / n
    ks = (emp_cdf - grid / (3 - 2 * grid)).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov bound at the 1% level
    for p in (0.1, 0.25, 0.5, 0.75, 0.9):
        q = torch.quantile(s[:100_000].double(), p).item()
        assert q == pytest.approx(3 * p / (1 + 2 * p), abs=0.006)
    # the median is 3/4 for shift 3 (not 1/2): the law favours high noise
    assert (s <= 0.75).double().mean().item() == pytest.approx(0.5, abs=0.005)
    # shift 1 is the uniform law
    u = sample_flow_sigmas(n, shift=1.0, generator=torch.Generator().manual_seed(1))
    assert (u <= 0.3).double().mean().item() == pytest.approx(0.3, abs=0.005)


def test_mix_sft_loss():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(10.0, requires_grad=True)
    for lam in (1e-4, 0.1, 0.5):
        out = mix_sft_loss(a, b, lam)
        assert out.item() == pytest.approx((1 - lam) * 2.0 + lam * 10.0, rel=1e-6)
    mix_sft_loss(a, b, 0.25).backward()
    assert a.grad.item() == pytest.approx(0.75) and b.grad.item() == pytest.approx(0.25)
    # no SFT term this step (or lambda = 0): L_grpo alone
    assert mix_sft_loss(a, None, 0.1).item() == 2.0
    assert mix_sft_loss(a, b, 0.0).item() == 2.0
