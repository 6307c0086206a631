"""Rollouts (mrgrpo.rollout) on an analytic velocity field: SDE window, CFG in one batch, stored
log-probs that re-score exactly, ODE limit, per-sample train-step choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgrpo.policies.base import Conditioning
from mrgrpo.rollout import (
    choose_train_steps,
    guided_velocity,
    sample_generators,
    sample_ode,
    sample_trajectories,
    sde_step_mask,
)
from mrgrpo.sde import sde_step_with_logprob, step_mean_std
from mrgrpo.seeding import SeedStream

N, C, H, W = 4, 2, 3, 3


def velocity(x, sigma, cond):
    """A smooth field that depends on x, sigma and the conditioning (so CFG changes it)."""
    return 0.5 * x + sigma.view(-1, 1, 1, 1) * cond.tensors["c"].view(-1, 1, 1, 1) - 0.1


def _cond(values):
    return Conditioning({"c": torch.tensor(values, dtype=torch.float32)})


def _sigmas(t=6):
    return torch.linspace(1, 0, t + 1)


def test_sde_step_mask_window_and_last_step():
    assert sde_step_mask(5, None).tolist() == [True, True, True, True, False]
    assert sde_step_mask(6, (1, 3)).tolist() == [False, True, True, False, False, False]
    assert sde_step_mask(4, (2, 9)).tolist() == [False, False, True, False]  # the last step is never an SDE step


def test_guided_velocity_is_one_batched_call_with_the_cfg_formula():
    calls = []

    def fn(x, s, c):
        calls.append(x.shape[0])
        return velocity(x, s, c)

    x = torch.randn(N, C, H, W)
    s = torch.full((N,), 0.6)
    cond, uncond = _cond([1.0, 2.0, 3.0, 4.0]), _cond([0.0] * N)
    out = guided_velocity(fn, x, s, cond, uncond, 3.0)
    assert calls == [2 * N]  # cond and uncond in ONE call
    v_c, v_u = velocity(x, s, cond), velocity(x, s, uncond)
    torch.testing.assert_close(out, v_u + 3.0 * (v_c - v_u))
    assert torch.equal(guided_velocity(fn, x, s, cond, uncond, 1.0), v_c)  # scale <= 1: no CFG
    assert torch.equal(guided_velocity(fn, x, s, cond, None, 5.0), v_c)


def test_stored_log_probs_rescore_exactly_and_only_sde_steps_have_them():
    x0 = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(0))
    gens = sample_generators(0, 1, range(N), stream=SeedStream.ROLLOUT_NOISE)
    traj = sample_trajectories(
        velocity,
        x0,
        _sigmas(),
        _cond([1.0, -1.0, 0.5, 0.0]),
        sampler="sde",
        noise_level=0.7,
        sde_window=(1, 4),
        generators=gens,
    )
    # only the window's steps 1..3 are stored: x_1 .. x_4 and three log-probs
    assert traj.latents.shape == (N, 4, C, H, W) and traj.log_probs.shape == (N, 3)
    assert traj.first_step == 1 and list(traj.stored_steps) == [1, 2, 3]
    assert traj.sde_steps.tolist() == [False, True, True, True, False, False]
    assert (traj.log_probs != 0).all() and traj.final.shape == (N, C, H, W)
    # re-scoring a stored transition with the same weights gives the stored log-prob bit for bit
    for t in (1, 2, 3):
        x_t, x_next, stored = traj.at(torch.arange(N), torch.full((N,), t))
        v = velocity(x_t, torch.full((N,), float(traj.sigmas[t])), _cond([1.0, -1.0, 0.5, 0.0]))
        again = sde_step_with_logprob(
            x_t,
            v,
            traj.sigmas[t].expand(N),
            traj.sigmas[t + 1].expand(N),
            sampler="sde",
            noise_level=0.7,
            prev_sample=x_next,
            sigma_max=float(traj.sigmas[1]),
        )
        assert torch.equal(again.log_prob, stored)
    with pytest.raises(IndexError, match="outside the stored steps"):
        traj.at(torch.arange(N), torch.full((N,), 4))
    # the ODE steps follow the Euler update exactly
    s0, s1 = float(traj.sigmas[0]), float(traj.sigmas[1])
    euler = x0 + (s1 - s0) * velocity(x0, torch.full((N,), s0), _cond([1.0, -1.0, 0.5, 0.0]))
    torch.testing.assert_close(traj.latents[:, 0], euler)
    # independently: Euler outside the window, SDE inside, and every step draws its noise (so the noise of
    # step t does not depend on where the window is)
    gens2 = sample_generators(0, 1, range(N), stream=SeedStream.ROLLOUT_NOISE)
    sig, x = _sigmas(), x0.clone()
    for t in range(6):
        v = velocity(x, torch.full((N,), float(sig[t])), _cond([1.0, -1.0, 0.5, 0.0]))
        z = torch.stack([torch.randn(C, H, W, generator=g) for g in gens2])
        if 1 <= t < 4:
            mean, std = step_mean_std(
                x, v, float(sig[t]), float(sig[t + 1]), sampler="sde", noise_level=0.7, sigma_max=float(sig[1])
            )
            x = mean + std * z
        else:
            x = x + (float(sig[t + 1]) - float(sig[t])) * v
    torch.testing.assert_close(traj.final, x, rtol=0, atol=1e-6)


def test_zero_noise_rollout_is_the_ode_sampler_and_samples_do_not_depend_on_the_batch():
    x0 = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(1))
    cond = _cond([1.0, 2.0, 0.0, -1.0])
    traj = sample_trajectories(
        velocity,
        x0,
        _sigmas(),
        cond,
        sampler="sde",
        noise_level=0.0,
        generators=sample_generators(0, 1, range(N), stream=SeedStream.ROLLOUT_NOISE),
    )
    torch.testing.assert_close(traj.final, sample_ode(velocity, x0, _sigmas(), cond), rtol=1e-5, atol=1e-6)
    # sample 2 generated alone (as on another process) is the same trajectory as inside the batch
    full = sample_trajectories(
        velocity,
        x0,
        _sigmas(),
        cond,
        sampler="sde",
        noise_level=0.7,
        generators=sample_generators(0, 1, range(N), stream=SeedStream.ROLLOUT_NOISE),
    )
    alone = sample_trajectories(
        velocity,
        x0[2:3],
        _sigmas(),
        cond.select([2]),
        sampler="sde",
        noise_level=0.7,
        generators=sample_generators(0, 1, [2], stream=SeedStream.ROLLOUT_NOISE),
    )
    torch.testing.assert_close(alone.latents[0], full.latents[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone.final[0], full.final[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone.log_probs[0], full.log_probs[2], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="rollout sampler"):
        sample_trajectories(velocity, x0, _sigmas(), cond, sampler="ode")


def test_choose_train_steps_is_a_per_sample_subset_of_the_sde_steps():
    mask = sde_step_mask(10, (2, 8))  # SDE steps 2..7
    seeds = [11, 12, 13, 11]
    steps = choose_train_steps(mask, 0.5, seeds)
    assert steps.shape == (4, 3) and steps.dtype == torch.long  # round(0.5 * 6)
    for row in steps.tolist():
        assert len(set(row)) == 3 and set(row) <= set(range(2, 8))
    assert steps[0].tolist() == steps[3].tolist()  # same seed, same choice, whatever the batch
    assert choose_train_steps(mask, 0.5, [12]).tolist() == [steps[1].tolist()]
    assert choose_train_steps(mask, 0.01, [1]).shape == (1, 1)  # at least one step
    # over many seeds every SDE step is chosen about equally often (a uniform subset)
    counts = np.bincount(choose_train_steps(mask, 0.5, list(range(3000))).flatten().numpy(), minlength=10)
    assert counts[:2].sum() == 0 and counts[8:].sum() == 0
    assert np.all(np.abs(counts[2:8] / 3000 - 0.5) < 0.04)
    with pytest.raises(ValueError, match="no SDE step"):
        choose_train_steps(torch.zeros(5, dtype=torch.bool), 0.5, [1])
