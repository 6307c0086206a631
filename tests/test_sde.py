"""Samplers (mrgrpo.sde) against the formulas of docs/training.md.

Expected values come from ``ref_step`` below: the docs/training.md formulas written again in float64
with plain torch/math, never through mrgrpo.sde's own helpers.
"""

from __future__ import annotations

import math

import pytest
import torch

from mrgrpo.sde import sde_step_with_logprob

B, C, H, W = 3, 4, 5, 5
NOISY = ["sde", "cps", "dance"]
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def ref_step(x, v, s, s2, sampler, a, sigma_1=None):
    """(mean, std) of one step from docs/training.md, float64, scalars s/s2/a."""
    x, v = x.double(), v.double()
    d = s2 - s
    if sampler == "ode":
        return x + d * v, 0.0
    if sampler == "sde":
        s_t = sigma_1 if s == 1 else s
        g = a * math.sqrt(s / (1 - s_t))
        return x * (1 + g * g * d / (2 * s)) + v * (1 + g * g * (1 - s) / (2 * s)) * d, g * math.sqrt(-d)
    x0_hat = x - s * v
    x1_hat = x + (1 - s) * v
    if sampler == "cps":
        std = s2 * math.sin(a * math.pi / 2)
        return (1 - s2) * x0_hat + math.sqrt(s2 * s2 - std * std) * x1_hat, std
    assert sampler == "dance"
    return x + (v + a * a * (x - (1 - s) * x0_hat) / (2 * (s * s + 1e-8))) * d, a * math.sqrt(-d)


def ref_log_prob(xp, mean, std):
    """mean over non-batch dims of the Gaussian log-density, written out element by element."""
    xp, mean = xp.double(), mean.double()
    out = []
    for i in range(xp.shape[0]):
        terms = -((xp[i] - mean[i]) ** 2) / (2 * std**2) - math.log(std) - LOG_SQRT_2PI
        out.append(terms.sum().item() / terms.numel())
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def xv():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)


@pytest.mark.parametrize("sampler", NOISY)
@pytest.mark.parametrize("s, s2, a", [(0.9, 0.8, 0.7), (0.5, 0.3, 0.3), (0.2, 0.05, 1.0)])
def test_mean_std_and_log_prob_follow_the_formulas(xv, sampler, s, s2, a):
    x, v = xv
    mean, std = ref_step(x, v, s, s2, sampler, a)
    xp = (
        mean + 0.37 * std * torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ).float()
    out = sde_step_with_logprob(x, v, s, s2, sampler=sampler, noise_level=a, prev_sample=xp)
    torch.testing.assert_close(out.mean.double(), mean, atol=2e-6, rtol=1e-5)
    assert out.std.shape == (B, 1, 1, 1)
    torch.testing.assert_close(
        out.std.double(), torch.full((B, 1, 1, 1), std, dtype=torch.float64), atol=1e-7, rtol=1e-6
    )
    torch.testing.assert_close(out.log_prob.double(), ref_log_prob(xp, mean, std), atol=2e-4, rtol=1e-5)
    assert torch.equal(out.prev_sample, xp)


@pytest.mark.parametrize("sampler", NOISY)
def test_zero_noise_level_equals_the_ode_step(xv, sampler):
    x, v = xv
    s, s2 = 0.6, 0.45
    ode_mean, _ = ref_step(x, v, s, s2, "ode", 0.0)
    ode = sde_step_with_logprob(x, v, s, s2, sampler="ode")
    torch.testing.assert_close(ode.mean.double(), ode_mean, atol=1e-6, rtol=1e-6)
    assert torch.equal(ode.prev_sample, ode.mean) and torch.equal(ode.std, torch.zeros(B, 1, 1, 1))
    # exactly 0: std == 0 and the draw is the ODE step
    out = sde_step_with_logprob(
        x, v, s, s2, sampler=sampler, noise_level=0.0, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(out.prev_sample, ode.prev_sample, atol=1e-6, rtol=1e-6)
    assert torch.equal(out.std, torch.zeros(B, 1, 1, 1))
    assert torch.equal(out.log_prob, torch.zeros(B))  # no density, and no NaN
    # the limit a -> 0: the gap to the ODE step shrinks with a (mean) and the draw with it
    gaps = []
    for a in (1e-1, 1e-2, 1e-3):
        out = sde_step_with_logprob(
            x, v, s, s2, sampler=sampler, noise_level=a, generator=torch.Generator().manual_seed(1)
        )
        gaps.append((out.prev_sample - ode.prev_sample).abs().max().item())
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[0] > 1e-2 and gaps[2] < 5e-3


@pytest.mark.parametrize("sampler", NOISY)
@pytest.mark.parametrize("cps_logprob", ["gaussian", "unnormalised"])
def test_rescoring_a_drawn_sample_gives_the_same_log_prob(xv, sampler, cps_logprob):
    x, v = xv
    kw = dict(sampler=sampler, noise_level=0.5, cps_logprob=cps_logprob)
    drawn = sde_step_with_logprob(x, v, 0.8, 0.7, generator=torch.Generator().manual_seed(3), **kw)
    # as in training: the stored sample and fresh (equal) model inputs, in another call
    again = sde_step_with_logprob(x.clone(), v.clone(), 0.8, 0.7, prev_sample=drawn.prev_sample.clone(), **kw)
    assert drawn.log_prob.shape == (B,) and drawn.log_prob.dtype == torch.float32
    assert torch.equal(drawn.log_prob, again.log_prob)
    assert torch.equal(torch.exp(again.log_prob - drawn.log_prob), torch.ones(B))  # on-policy ratio exactly 1
    assert torch.equal(drawn.mean, again.mean) and torch.equal(drawn.std, again.std)


@pytest.mark.parametrize("sampler", NOISY)
def test_log_prob_is_the_torch_normal_log_prob(xv, sampler):
    x, v = xv
    out = sde_step_with_logprob(
        x, v, 0.9, 0.75, sampler=sampler, noise_level=0.7, generator=torch.Generator().manual_seed(4)
    )
    mean, std = ref_step(x, v, 0.9, 0.75, sampler, 0.7)
    normal = torch.distributions.Normal(mean, torch.full_like(mean, std))
    expected = normal.log_prob(out.prev_sample.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob.double(), expected, atol=1e-5, rtol=1e-5)


def test_sde_matches_a_hand_derived_value():
    # x = 1, v = 2, s = 0.5, s' = 0.4, a = 0.7:
    # d = -0.1; g = 0.7 * sqrt(0.5 / 0.5) = 0.7; g^2 = 0.49
    # mu = 1 * (1 + 0.49 * (-0.1) / 1) + 2 * (1 + 0.49 * 0.5 / 1) * (-0.1) = 0.951 - 0.249 = 0.702
    # std = 0.7 * sqrt(0.1) = 0.22135943...
    # x' = 0.8: log p = -(0.098^2) / (2 * 0.049) - log(0.22135943) - 0.91893853
    #                 = -0.098 + 1.50796749 - 0.91893853 = 0.49102896
    one = lambda val: torch.tensor(val).view(1, 1, 1, 1)  # noqa: E731
    out = sde_step_with_logprob(one(1.0), one(2.0), 0.5, 0.4, sampler="sde", noise_level=0.7, prev_sample=one(0.8))
    assert out.mean.item() == pytest.approx(0.702, abs=1e-6)
    assert out.std.item() == pytest.approx(0.22135943, abs=1e-7)
    assert out.log_prob.item() == pytest.approx(0.49102896, abs=2e-6)


def test_sde_at_sigma_one_uses_sigma_max():
    # s = 1 would divide by 1 - s = 0; s~ = sigma_1 = 0.96 instead (by default sigma_next):
    # g = 0.7 * sqrt(1 / 0.04) = 3.5, d = -0.04, std = 3.5 * 0.2 = 0.7,
    # mu = x * (1 + 12.25 * (-0.04) / 2) + v * (1 + 0) * (-0.04) = 0.755 x - 0.04 v  -> x=1, v=2: 0.675
    one = lambda val: torch.tensor(val).view(1, 1, 1, 1)  # noqa: E731
    out = sde_step_with_logprob(one(1.0), one(2.0), 1.0, 0.96, sampler="sde", noise_level=0.7, prev_sample=one(0.675))
    assert out.std.item() == pytest.approx(0.7, abs=1e-6)
    assert out.mean.item() == pytest.approx(0.675, abs=1e-6)
    assert out.log_prob.item() == pytest.approx(-math.log(0.7) - LOG_SQRT_2PI, abs=1e-6)
    # an explicit sigma_max = 0.9: g^2 = 0.49 / 0.1 = 4.9, std = sqrt(4.9 * 0.04) = sqrt(0.196),
    # mu = 1 * (1 - 4.9 * 0.02) - 0.08 = 0.822
    out = sde_step_with_logprob(
        one(1.0),
        one(2.0),
        1.0,
        0.96,
        sampler="sde",
        noise_level=0.7,
        sigma_max=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.std.item() == pytest.approx(math.sqrt(0.196), abs=1e-6)
    assert out.mean.item() == pytest.approx(0.822, abs=1e-6)
    assert math.isfinite(out.log_prob.item()) and math.isfinite(out.prev_sample.item())
    # a [B] sigma with only some samples at 1: the others keep g = a * sqrt(s / (1 - s))
    x = torch.ones(2, 1, 1, 1)
    out = sde_step_with_logprob(
        x,
        2 * x,
        torch.tensor([1.0, 0.5]),
        torch.tensor([0.96, 0.4]),
        sampler="sde",
        noise_level=0.7,
        prev_sample=torch.tensor([0.675, 0.702]).view(2, 1, 1, 1),
    )
    torch.testing.assert_close(out.std.flatten(), torch.tensor([0.7, 0.22135943]))
    torch.testing.assert_close(out.mean.flatten(), torch.tensor([0.675, 0.702]))
    assert torch.isfinite(out.log_prob).all()


def test_cps_unnormalised_log_prob_and_ratio_relation(xv):
    """Derivation. With the same std, the Gaussian log-prob is
        lp_g = -mean((x' - mu)^2) / (2 std^2) - log std - log sqrt(2 pi) = lp_u / (2 std^2) + const,
    so for two scorings (old, new) of the same x' at the same step
        log ratio_g = (lp_u_new - lp_u_old) / (2 std^2),  i.e.  ratio_g = ratio_u ** (1 / (2 std^2)).
    The ratios agree exactly when the means agree (both 1), or when 2 std^2 == 1; otherwise not."""
    x, v = xv
    s, s2, a = 0.7, 0.6, 0.5
    mean, std = ref_step(x, v, s, s2, "cps", a)
    xp = (mean + 0.1).float()
    kw = dict(sampler="cps", noise_level=a, prev_sample=xp)
    old_g = sde_step_with_logprob(x, v, s, s2, **kw)
    old_u = sde_step_with_logprob(x, v, s, s2, cps_logprob="unnormalised", **kw)
    expected_u = -((xp.double() - old_u.mean.double()) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(old_u.log_prob.double(), expected_u, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(old_u.log_prob, torch.full((B,), -0.01), atol=1e-5, rtol=1e-4)
    # new policy: a different velocity, the same std
    v_new = v + 0.3
    new_g = sde_step_with_logprob(x, v_new, s, s2, **kw)
    new_u = sde_step_with_logprob(x, v_new, s, s2, cps_logprob="unnormalised", **kw)
    assert torch.equal(new_g.std, old_g.std)
    log_r_g = (new_g.log_prob - old_g.log_prob).double()
    log_r_u = (new_u.log_prob - old_u.log_prob).double()
    assert log_r_u.abs().min() > 1e-4  # the means differ
    torch.testing.assert_close(log_r_g, log_r_u / (2 * std**2), atol=1e-4, rtol=1e-3)
    assert (torch.exp(log_r_g) - torch.exp(log_r_u)).abs().min() > 1e-3  # 2 std^2 = 0.36 != 1: ratios differ
    # identical means: both ratios exactly 1
    again_g = sde_step_with_logprob(x.clone(), v.clone(), s, s2, **kw)
    again_u = sde_step_with_logprob(x.clone(), v.clone(), s, s2, cps_logprob="unnormalised", **kw)
    assert torch.equal(torch.exp(again_g.log_prob - old_g.log_prob), torch.ones(B))
    assert torch.equal(torch.exp(again_u.log_prob - old_u.log_prob), torch.ones(B))
    # 2 std^2 == 1 (a = 1, s' = 1/sqrt(2): std = s' = 1/sqrt(2)): the ratios coincide
    s2 = 1 / math.sqrt(2)
    kw = dict(sampler="cps", noise_level=1.0, prev_sample=xp)
    r = {}
    for mode in ("gaussian", "unnormalised"):
        o = sde_step_with_logprob(x, v, 0.8, s2, cps_logprob=mode, **kw)
        n = sde_step_with_logprob(x, v_new, 0.8, s2, cps_logprob=mode, **kw)
        assert o.std.flatten()[0].item() == pytest.approx(s2, abs=1e-7)
        r[mode] = torch.exp(n.log_prob - o.log_prob)
    assert (r["gaussian"] - 1).abs().max() > 1e-3
    torch.testing.assert_close(r["gaussian"], r["unnormalised"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", NOISY)
def test_float32_for_bf16_inputs(xv, sampler):
    x, v = (t.bfloat16() for t in xv)
    out = sde_step_with_logprob(
        x, v, 0.5, 0.4, sampler=sampler, noise_level=0.6, generator=torch.Generator().manual_seed(0)
    )
    for t in (out.prev_sample, out.log_prob, out.mean, out.std):
        assert t.dtype == torch.float32
    # the arithmetic itself is float32: same numbers as the float64 formulas on the upcast inputs
    mean, std = ref_step(x.float(), v.float(), 0.5, 0.4, sampler, 0.6)
    torch.testing.assert_close(out.mean.double(), mean, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(out.log_prob.double(), ref_log_prob(out.prev_sample, mean, std), atol=2e-4, rtol=1e-5)
    # re-scoring a bf16-stored sample is float32 too
    res = sde_step_with_logprob(
        x, v, 0.5, 0.4, sampler=sampler, noise_level=0.6, prev_sample=out.prev_sample.bfloat16()
    )
    assert res.log_prob.dtype == torch.float32 and res.prev_sample.dtype == torch.float32


@pytest.mark.parametrize("sampler", NOISY)
def test_empirical_mean_and_std_of_draws(sampler):
    n = 20_000
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 2, 2, 2, generator=g).expand(n, -1, -1, -1)
    v = torch.randn(1, 2, 2, 2, generator=g).expand(n, -1, -1, -1)
    out = sde_step_with_logprob(
        x, v, 0.6, 0.45, sampler=sampler, noise_level=0.6, generator=torch.Generator().manual_seed(5)
    )
    mean, std = ref_step(x[:1], v[:1], 0.6, 0.45, sampler, 0.6)
    draws = out.prev_sample.double()
    assert (draws.mean(0) - mean[0]).abs().max().item() < 4.5 * std / math.sqrt(n)
    emp_std = draws.std(0)
    assert (emp_std / std - 1).abs().max().item() < 0.03


def test_per_sample_generators(xv):
    x, v = xv
    out = sde_step_with_logprob(
        x, v, 0.5, 0.4, sampler="sde", generator=[torch.Generator().manual_seed(10 + i) for i in range(B)]
    )
    mean, std = ref_step(x, v, 0.5, 0.4, "sde", 0.7)
    for i in range(B):
        z = torch.randn(C, H, W, generator=torch.Generator().manual_seed(10 + i))
        torch.testing.assert_close(out.prev_sample[i].double(), mean[i] + std * z.double(), atol=2e-6, rtol=1e-5)
    # sample 1 alone with its own generator draws the same as inside the batch
    alone = sde_step_with_logprob(
        x[1:2], v[1:2], 0.5, 0.4, sampler="sde", generator=[torch.Generator().manual_seed(11)]
    )
    assert torch.equal(alone.prev_sample[0], out.prev_sample[1])
    with pytest.raises(ValueError, match="generators"):
        sde_step_with_logprob(x, v, 0.5, 0.4, generator=[torch.Generator()])


@pytest.mark.parametrize("sampler", NOISY)
def test_sigma_tensor_equals_sigma_float(xv, sampler):
    x, v = xv
    a = sde_step_with_logprob(x, v, 0.5, 0.4, sampler=sampler, generator=torch.Generator().manual_seed(7))
    b = sde_step_with_logprob(
        x, v, torch.full((B,), 0.5), torch.full((B,), 0.4), sampler=sampler, generator=torch.Generator().manual_seed(7)
    )
    for f in ("prev_sample", "log_prob", "mean", "std"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    # different sigmas per sample: row i equals the float call with sigma[i]
    sig, sig_next = [0.9, 0.5, 0.3], [0.8, 0.35, 0.1]
    xp = x + 0.1
    batch = sde_step_with_logprob(x, v, torch.tensor(sig), torch.tensor(sig_next), sampler=sampler, prev_sample=xp)
    for i in range(B):
        row = sde_step_with_logprob(
            x[i : i + 1], v[i : i + 1], sig[i], sig_next[i], sampler=sampler, prev_sample=xp[i : i + 1]
        )
        torch.testing.assert_close(batch.log_prob[i : i + 1], row.log_prob, atol=0, rtol=0)
        torch.testing.assert_close(batch.mean[i : i + 1], row.mean, atol=0, rtol=0)
    with pytest.raises(ValueError, match="sigma"):
        sde_step_with_logprob(x, v, torch.full((B + 1,), 0.5), 0.4)


def test_a_zero_std_sample_does_not_zero_the_batch(xv):
    # cps std = s' * sin(a pi / 2) is 0 where s' = 0 (the last step); the other samples keep their density
    x, v = xv
    sig, sig_next = torch.tensor([0.5, 0.2, 0.7]), torch.tensor([0.4, 0.0, 0.6])
    xp = x + 0.05
    out = sde_step_with_logprob(x, v, sig, sig_next, sampler="cps", noise_level=0.8, prev_sample=xp)
    assert out.log_prob[1].item() == 0.0
    for i in (0, 2):
        mean, std = ref_step(x[i : i + 1], v[i : i + 1], sig[i].item(), sig_next[i].item(), "cps", 0.8)
        torch.testing.assert_close(
            out.log_prob[i : i + 1].double(), ref_log_prob(xp[i : i + 1], mean, std), atol=2e-4, rtol=1e-5
        )
        assert out.log_prob[i].item() != 0.0


def test_bad_arguments(xv):
    x, v = xv
    with pytest.raises(ValueError, match="unknown sampler"):
        sde_step_with_logprob(x, v, 0.5, 0.4, sampler="ddim")
    with pytest.raises(ValueError, match="cps_logprob"):
        sde_step_with_logprob(x, v, 0.5, 0.4, sampler="cps", cps_logprob="l2")
    with pytest.raises(ValueError, match="prev_sample shape"):
        sde_step_with_logprob(x, v, 0.5, 0.4, prev_sample=x[:1])
