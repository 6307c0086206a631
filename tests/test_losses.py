"""Losses (mrgrpo.losses) against docs/training.md, expected values computed by hand or by loops."""

from __future__ import annotations

import math

import pytest
import torch

from mrgrpo.losses import (
    StepLossStats,
    clipped_policy_loss,
    flow_matching_loss,
    mean_kl,
    mrgrpo_step_loss,
    sample_flow_sigmas,
    velocity_kl,
)


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
    out = mrgrpo_step_loss(lp, old, adv, clip_range=1e-4)
    assert torch.equal(out.ratio, torch.ones(16))
    assert out.clip_frac == 0.0 and not out.clipped_low.any() and not out.clipped_high.any()


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
    out = mrgrpo_step_loss(torch.log(torch.tensor(ratios)), torch.zeros(4), torch.tensor(adv), clip_range=(low, high))
    assert out.clip_frac == pytest.approx(0.5)
    assert out.clipped_high.tolist() == [False, True, False, False]  # 1.25 > 1 + 0.2
    assert out.clipped_low.tolist() == [False, False, True, False]  # 0.85 < 1 - 0.1
    with pytest.raises(ValueError):
        clipped_policy_loss(lp, torch.zeros(4), torch.tensor(adv), -0.1)


def mse_loop(a, b):
    return torch.tensor(
        [((a[i].double() - b[i].double()) ** 2).sum().item() / a[i].numel() for i in range(a.shape[0])],
        dtype=torch.float64,
    )


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


def test_step_loss_value_against_the_formula():
    """L = (1 - lambda) (L_policy + beta mean KL) + lambda n_acc L_sft, each part written out by hand."""
    ratios, adv, kl = [1.3, 0.95, 0.7], [1.0, -0.5, -2.0], [0.2, 0.4, 0.9]
    lp = torch.log(torch.tensor(ratios))
    e, beta, lam, n_acc, sft = 0.1, 0.5, 0.25, 6, 3.0
    policy = sum(max(-a * r, -a * min(max(r, 1 - e), 1 + e)) for a, r in zip(adv, ratios)) / 3
    out = mrgrpo_step_loss(
        lp,
        torch.zeros(3),
        torch.tensor(adv),
        clip_range=e,
        kl=torch.tensor(kl),
        beta=beta,
        sft_loss=torch.tensor(sft),
        sft_coef=lam,
        accumulation_steps=n_acc,
    )
    assert out.loss.item() == pytest.approx((1 - lam) * (policy + beta * 0.5) + lam * n_acc * sft, rel=1e-6)
    assert out.policy_loss.item() == pytest.approx(policy, rel=1e-6)
    assert out.kl.item() == pytest.approx(0.5, rel=1e-6) and out.sft_loss.item() == 3.0
    torch.testing.assert_close(out.ratio, torch.tensor(ratios))
    assert out.clipped_high.tolist() == [True, False, False] and out.clipped_low.tolist() == [False, False, True]
    # without an SFT batch on this micro-batch the GRPO part is still scaled by (1 - lambda)
    no_sft = mrgrpo_step_loss(
        lp, torch.zeros(3), torch.tensor(adv), clip_range=e, kl=torch.tensor(kl), beta=beta, sft_coef=lam
    )
    assert no_sft.loss.item() == pytest.approx((1 - lam) * (policy + beta * 0.5), rel=1e-6) and no_sft.sft_loss is None
    # lambda = 0 and beta = 0: the clipped surrogate alone (the KL is still reported)
    bare = mrgrpo_step_loss(lp, torch.zeros(3), torch.tensor(adv), clip_range=e, kl=torch.tensor(kl))
    assert bare.loss.item() == pytest.approx(policy, rel=1e-6) and bare.kl.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="accumulation_steps"):
        mrgrpo_step_loss(lp, torch.zeros(3), torch.tensor(adv), clip_range=e, accumulation_steps=0)


def test_step_loss_gradient_under_accelerate_accumulation_equals_the_mixed_objective():
    """Through accelerate's gradient accumulation (n_acc backward passes, one optimizer step), the
    gradient is exactly (1 - lambda) * mean over passes of grad(L_grpo) + lambda * grad(L_sft):
    the SFT term rides on ONE pass and its scaling by n_acc undoes accelerate's division."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    n_acc, lam, beta, e = 4, 0.3, 0.2, 0.05
    w0 = torch.randn(5)
    feats = [torch.randn(6, 5) for _ in range(n_acc)]
    old = [torch.randn(6) * 0.01 for _ in range(n_acc)]
    adv = [torch.randn(6) for _ in range(n_acc)]
    sft_x = torch.randn(8, 5)

    def parts(w):
        grpo = []
        for f, o, a in zip(feats, old, adv):
            lp = f @ w * 0.01  # log-probs near the old ones: some ratios inside the clip, some out
            kl = (f @ w) ** 2
            grpo.append(clipped_policy_loss(lp, o, a, e) + beta * kl.mean())
        return grpo, ((sft_x @ w) ** 2).mean()

    # independent: the mixed objective differentiated directly
    w_ref = w0.clone().requires_grad_(True)
    grpo, sft = parts(w_ref)
    ((1 - lam) * torch.stack(grpo).mean() + lam * sft).backward()

    # the trainer's way: one mrgrpo_step_loss per pass inside accelerator.accumulate
    def accumulated_grad(scale_sft: int) -> torch.Tensor:
        model = torch.nn.Linear(5, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(w0[None])
        acc = Accelerator(gradient_accumulation_steps=n_acc, cpu=True)
        model = acc.prepare(model)
        synced = []
        for i in range(n_acc):
            with acc.accumulate(model):
                w = model.weight[0]
                out = mrgrpo_step_loss(
                    feats[i] @ w * 0.01,
                    old[i],
                    adv[i],
                    clip_range=e,
                    kl=(feats[i] @ w) ** 2,
                    beta=beta,
                    sft_loss=((sft_x @ w) ** 2).mean() if i == 0 else None,
                    sft_coef=lam,
                    accumulation_steps=scale_sft,
                )
                acc.backward(out.loss)
                synced.append(acc.sync_gradients)
        assert synced == [False] * (n_acc - 1) + [True]
        return model.weight.grad[0].clone()

    torch.testing.assert_close(accumulated_grad(n_acc), w_ref.grad, rtol=1e-5, atol=1e-7)
    # without the n_acc factor the SFT term would weigh lambda / n_acc: off by exactly lambda (1 - 1/n_acc) grad L_sft
    w_s = w0.clone().requires_grad_(True)
    (g_sft,) = torch.autograd.grad(((sft_x @ w_s) ** 2).mean(), [w_s])
    torch.testing.assert_close(accumulated_grad(1), w_ref.grad - lam * (1 - 1 / n_acc) * g_sft, rtol=1e-5, atol=1e-6)


def test_step_loss_stats_collect_means_and_extremes():
    stats = StepLossStats()
    stats.add(
        mrgrpo_step_loss(
            torch.log(torch.tensor([1.0, 1.2])),
            torch.zeros(2),
            torch.tensor([1.0, -1.0]),
            clip_range=0.1,
            kl=torch.tensor([1.0, 3.0]),
        )
    )
    stats.add(
        mrgrpo_step_loss(
            torch.log(torch.tensor([0.5, 1.0])),
            torch.zeros(2),
            torch.tensor([1.0, -1.0]),
            clip_range=0.1,
            kl=torch.tensor([0.0, 0.0]),
        )
    )
    m = stats.metrics()
    assert m["ratio/mean"] == pytest.approx((1.1 + 0.75) / 2) and m["ratio/min"] == pytest.approx(0.5)
    assert m["ratio/max"] == pytest.approx(1.2) and m["clip_frac"] == pytest.approx(0.5)
    assert m["loss/kl"] == pytest.approx(1.0) and "loss/sft" not in m
    # 1.2 is above 1 + 0.1, 0.5 below 1 - 0.1: one of two samples each pass, one on each side
    assert m["clip_frac/high"] == pytest.approx(0.25) and m["clip_frac/low"] == pytest.approx(0.25)
    assert m["ratio/std"] == pytest.approx(
        torch.tensor([1.0, 1.2, 0.5, 1.0], dtype=torch.float64).std().item(), rel=1e-6
    )
