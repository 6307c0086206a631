"""Samplers against MATH.md, computed independently of mrgrpo.sde."""

from __future__ import annotations

import math

import pytest
import torch

from mrgrpo.sde import sde_step_with_logprob

B, C, H, W = 3, 4, 5, 5


@pytest.fixture
def xv():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)


def ode(x, v, s, s2):
    return x + (s2 - s) * v


@pytest.mark.parametrize("sampler", ["sde", "cps", "dance"])
def test_zero_noise_equals_ode(xv, sampler):
    x, v = xv
    out = sde_step_with_logprob(x, v, 0.6, 0.5, sampler=sampler, noise_level=1e-8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.prev_sample, ode(x, v, 0.6, 0.5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mean, ode(x, v, 0.6, 0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", ["sde", "cps", "dance"])
def test_rescoring_a_drawn_sample_gives_the_same_log_prob(xv, sampler):
    x, v = xv
    drawn = sde_step_with_logprob(x, v, 0.8, 0.7, sampler=sampler, noise_level=0.5, generator=torch.Generator().manual_seed(3))
    again = sde_step_with_logprob(x, v, 0.8, 0.7, sampler=sampler, noise_level=0.5, prev_sample=drawn.prev_sample)
    assert torch.equal(drawn.log_prob, again.log_prob)
    assert drawn.log_prob.shape == (B,)


@pytest.mark.parametrize("sampler", ["sde", "cps", "dance"])
def test_gaussian_log_prob_matches_torch_normal(xv, sampler):
    x, v = xv
    out = sde_step_with_logprob(x, v, 0.9, 0.75, sampler=sampler, noise_level=0.7, generator=torch.Generator().manual_seed(4))
    ref = torch.distributions.Normal(out.mean, out.std.expand_as(out.mean)).log_prob(out.prev_sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob, ref, atol=1e-5, rtol=1e-5)


def test_sde_matches_hand_derived_value():
    # one scalar element: x=1, v=2, s=0.5, s'=0.4, a=0.7
    s, s2, a, x, v = 0.5, 0.4, 0.7, 1.0, 2.0
    d = s2 - s  # -0.1
    g = a * math.sqrt(s / (1 - s))  # 0.7
    mean = x * (1 + g * g * d / (2 * s)) + v * (1 + g * g * (1 - s) / (2 * s)) * d
    # by hand: 1*(1 - 0.049) + 2*(1 + 0.245)*(-0.1) = 0.951 - 0.249 = 0.702
    assert mean == pytest.approx(0.702, abs=1e-12)
    std = g * math.sqrt(-d)
    xp = torch.tensor(0.8).view(1, 1, 1, 1)
    out = sde_step_with_logprob(torch.tensor(x).view(1, 1, 1, 1), torch.tensor(v).view(1, 1, 1, 1), s, s2,
                                sampler="sde", noise_level=a, prev_sample=xp)
    assert out.mean.item() == pytest.approx(0.702, abs=1e-6)
    assert out.std.item() == pytest.approx(std, abs=1e-6)
    expected_lp = -((0.8 - 0.702) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    assert out.log_prob.item() == pytest.approx(expected_lp, abs=1e-5)


def test_sde_at_sigma_one_uses_sigma_max(xv):
    x, v = xv
    out = sde_step_with_logprob(x, v, 1.0, 0.95, sampler="sde", noise_level=0.7, sigma_max=0.95, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.log_prob).all()
    g = 0.7 * math.sqrt(1.0 / (1 - 0.95))
    assert out.std.flatten()[0].item() == pytest.approx(g * math.sqrt(0.05), rel=1e-5)


def test_cps_formula_and_unnormalised_ratio(xv):
    x, v = xv
    s, s2, a = 0.7, 0.6, 0.5
    std = s2 * math.sin(a * math.pi / 2)
    mean = (1 - s2) * (x - s * v) + math.sqrt(s2**2 - std**2) * (x + (1 - s) * v)
    xp = mean + 0.1
    g = sde_step_with_logprob(x, v, s, s2, sampler="cps", noise_level=a, prev_sample=xp)
    torch.testing.assert_close(g.mean, mean, atol=1e-5, rtol=1e-5)
    u = sde_step_with_logprob(x, v, s, s2, sampler="cps", noise_level=a, prev_sample=xp, cps_logprob="unnormalised")
    torch.testing.assert_close(u.log_prob, torch.full((B,), -0.01), atol=1e-6, rtol=1e-5)
    # same std: gaussian log-prob = unnormalised / (2 std^2) + const, so ratios agree only after that scaling
    v2 = v + 0.01
    g2 = sde_step_with_logprob(x, v2, s, s2, sampler="cps", noise_level=a, prev_sample=xp)
    u2 = sde_step_with_logprob(x, v2, s, s2, sampler="cps", noise_level=a, prev_sample=xp, cps_logprob="unnormalised")
    torch.testing.assert_close(g2.log_prob - g.log_prob, (u2.log_prob - u.log_prob) / (2 * std**2), atol=1e-4, rtol=1e-3)
    # identical means: both ratios are exactly 1
    assert torch.equal(torch.exp(g.log_prob - g.log_prob), torch.ones(B))
    assert torch.equal(torch.exp(u.log_prob - u.log_prob), torch.ones(B))


def test_float32_outputs_for_bf16_inputs(xv):
    x, v = xv
    out = sde_step_with_logprob(x.bfloat16(), v.bfloat16(), 0.5, 0.4, sampler="sde", generator=torch.Generator().manual_seed(0))
    for t in (out.prev_sample, out.log_prob, out.mean, out.std):
        assert t.dtype == torch.float32


@pytest.mark.parametrize("sampler", ["sde", "cps", "dance"])
def test_empirical_moments_match_mean_and_std(sampler):
    x = torch.full((4000, 1, 4, 4), 0.3)
    v = torch.full((4000, 1, 4, 4), -0.5)
    out = sde_step_with_logprob(x, v, 0.6, 0.45, sampler=sampler, noise_level=0.6, generator=torch.Generator().manual_seed(5))
    draws = out.prev_sample.flatten()
    assert draws.mean().item() == pytest.approx(out.mean.flatten()[0].item(), abs=3 * out.std.max().item() / math.sqrt(draws.numel()) + 1e-4)
    assert draws.std().item() == pytest.approx(out.std.flatten()[0].item(), rel=0.02)


def test_per_sample_generators_and_tensor_sigma(xv):
    x, v = xv
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    a = sde_step_with_logprob(x, v, 0.5, 0.4, sampler="sde", generator=gens)
    b = sde_step_with_logprob(x, v, torch.full((B,), 0.5), torch.full((B,), 0.4), sampler="sde",
                              generator=[torch.Generator().manual_seed(i) for i in range(B)])
    assert torch.equal(a.prev_sample, b.prev_sample)
    # sample i's noise depends on its own generator only
    c = sde_step_with_logprob(x[1:2], v[1:2], 0.5, 0.4, sampler="sde", generator=[torch.Generator().manual_seed(1)])
    assert torch.equal(a.prev_sample[1:2], c.prev_sample)


def test_bad_sampler_and_shapes(xv):
    x, v = xv
    with pytest.raises(ValueError, match="unknown sampler"):
        sde_step_with_logprob(x, v, 0.5, 0.4, sampler="ddim")
    with pytest.raises(ValueError, match="prev_sample shape"):
        sde_step_with_logprob(x, v, 0.5, 0.4, prev_sample=x[:1])
