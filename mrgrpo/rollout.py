"""Rollouts: G trajectories per prompt, batched, with the per-step latents and log-probs training needs.

The conditioning of each prompt is computed once and repeated G times (``Conditioning.repeat``);
all B*G samples of a process go through the denoiser as one batch (CFG doubles it in the same
call). Every step stores ``x_t`` and float32 log-probs; steps outside the SDE window (and the
last step, whose ``cps`` std is 0 and which is never trained) are ODE steps with no log-prob.

Noise comes from one generator per sample, seeded from ``(seed, stream, step, global sample index)``
(:mod:`mrgrpo.seeding`),
so a sample's trajectory does not depend on how samples are split across processes or batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mrgrpo.policies.base import Conditioning
from mrgrpo.sde import SAMPLERS, sde_step_with_logprob
from mrgrpo.seeding import SeedStream, derive_seed

VelocityFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass
class Trajectories:
    """B*G sampled trajectories of one process.

    Attributes:
        latents: ``[N, T + 1, C, h, w]`` float32: ``latents[:, t]`` is ``x`` before step ``t``.
        log_probs: ``[N, T]`` float32 log-probs of each step (0 for ODE steps).
        sigmas: ``[T + 1]`` float32 noise levels, 1 -> 0.
        sde_steps: ``[T]`` bool, the steps sampled stochastically (trainable).
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    sde_steps: torch.Tensor

    @property
    def final(self) -> torch.Tensor:
        """Final latents ``[N, C, h, w]``."""
        return self.latents[:, -1]


@dataclass
class RolloutBatch:
    """What one process's rollout of one step hands to scoring and training.

    Attributes:
        records: the B prompt records of this process (each carries ``prompt``, ``source``, ``fields``).
        group_size: G, images per record; sample ``i`` belongs to record ``i // G``.
        cond: conditioning of the N = B*G samples (each record's encoding repeated G times).
        uncond: the negative conditioning for CFG, or ``None``.
        traj: the sampled :class:`Trajectories`.
        pixels: ``[N, 3, H, W]`` float32 decoded images in ``[0, 1]`` (CPU).
        group_ids: ``[N]`` long global group index (one group per prompt, never across processes).
        sample_ids: ``[N]`` global sample indices (seed the per-sample noise).
        times: seconds of the rollout's phases (``time/encode``, ``time/rollout``, ``time/decode``).
        prompts_truncated: prompts cut to the policy's token limit in this rollout.
    """

    records: list[Any]
    group_size: int
    cond: Conditioning
    uncond: Conditioning | None
    traj: Trajectories
    pixels: torch.Tensor
    group_ids: torch.Tensor
    sample_ids: list[int]
    times: dict[str, float] = field(default_factory=dict)
    prompts_truncated: int = 0

    def __len__(self) -> int:
        return len(self.sample_ids)


def sample_generators(
    seed: int, step: int, sample_ids: Sequence[int], device: torch.device | str = "cpu", *, stream: SeedStream
) -> list[torch.Generator]:
    """One generator per sample id, seeded from ``derive_seed(seed, stream, step, sample id)``."""
    gens = []
    for sid in sample_ids:
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(seed, stream, step, sid))
        gens.append(g)
    return gens


def sde_step_mask(num_steps: int, window: tuple[int, int] | None) -> torch.Tensor:
    """``[T]`` bool: steps taken with the SDE (inside ``window``, never the last step)."""
    mask = torch.zeros(num_steps, dtype=torch.bool)
    start, end = window if window is not None else (0, num_steps)
    mask[start : min(end, num_steps)] = True
    mask[-1] = False
    return mask


def guided_velocity(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    cfg_scale: float,
) -> torch.Tensor:
    """``v_u + w (v_c - v_u)`` with cond and uncond in ONE batch; plain ``v_c`` when ``w <= 1`` or no uncond.

    Shapes: ``x [B, C, h, w]``, ``sigma [B]``; returns ``[B, C, h, w]``.
    """
    if uncond is None or cfg_scale <= 1.0:
        return velocity_fn(x, sigma, cond)
    try:
        both = Conditioning.concat([cond, uncond])
    except RuntimeError:  # different sequence lengths: two calls
        v_c, v_u = velocity_fn(x, sigma, cond), velocity_fn(x, sigma, uncond)
    else:
        v_c, v_u = velocity_fn(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


@torch.no_grad()
def sample_trajectories(
    velocity_fn: VelocityFn,
    init_latents: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    uncond: Conditioning | None = None,
    cfg_scale: float = 0.0,
    sampler: str = "cps",
    noise_level: float | None = None,
    sde_window: tuple[int, int] | None = None,
    generators: Sequence[torch.Generator] | None = None,
    cps_logprob: str = "gaussian",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    progress: Callable[[int], None] | None = None,
) -> Trajectories:
    """Denoise ``init_latents [N, C, h, w]`` along ``sigmas [T + 1]``, recording every step.

    ``cond``/``uncond`` hold N samples (already repeated G times). ``sampler`` is used inside
    the SDE window, ``ode`` elsewhere. Returns :class:`Trajectories` on the latents' device.
    """
    if sampler not in SAMPLERS or sampler == "ode":
        raise ValueError(f"rollout sampler must be one of sde, cps, dance; got {sampler!r}")
    n = init_latents.shape[0]
    num_steps = sigmas.shape[0] - 1
    device = init_latents.device
    sde_mask = sde_step_mask(num_steps, sde_window)
    latents = torch.empty((n, num_steps + 1, *init_latents.shape[1:]), dtype=torch.float32, device=device)
    log_probs = torch.zeros((n, num_steps), dtype=torch.float32, device=device)
    x = init_latents.float()
    latents[:, 0] = x
    sigma_max = float(sigmas[1])
    for t in range(num_steps):
        s = torch.full((n,), float(sigmas[t]), dtype=torch.float32, device=device)
        with autocast():
            v = guided_velocity(velocity_fn, x, s, cond, uncond, cfg_scale)
        step = sde_step_with_logprob(
            x,
            v.float(),
            float(sigmas[t]),
            float(sigmas[t + 1]),
            sampler=sampler if sde_mask[t] else "ode",
            noise_level=noise_level,
            generator=generators,
            sigma_max=sigma_max,
            cps_logprob=cps_logprob,
        )
        x = step.prev_sample
        latents[:, t + 1] = x
        log_probs[:, t] = step.log_prob
        if progress is not None:
            progress(t)
    return Trajectories(latents, log_probs, sigmas.float().to(device), sde_mask.to(device))


@torch.no_grad()
def sample_ode(
    velocity_fn: VelocityFn,
    init_latents: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    uncond: Conditioning | None = None,
    cfg_scale: float = 0.0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Deterministic Euler sampling (evaluation); returns final latents ``[N, C, h, w]`` float32."""
    x = init_latents.float()
    n = x.shape[0]
    for t in range(sigmas.shape[0] - 1):
        s = torch.full((n,), float(sigmas[t]), dtype=torch.float32, device=x.device)
        with autocast():
            v = guided_velocity(velocity_fn, x, s, cond, uncond, cfg_scale)
        x = x + (float(sigmas[t + 1]) - float(sigmas[t])) * v.float()
    return x


def choose_train_steps(sde_steps: torch.Tensor, fraction: float, sample_seeds: Sequence[int]) -> torch.Tensor:
    """Per sample, a random subset of the SDE steps to train: ``[N, k]`` long, ``k = round(fraction * n_sde)``.

    Each sample draws its own permutation from its seed (so the choice does not depend on the
    process layout).
    """
    candidates = torch.nonzero(sde_steps.cpu(), as_tuple=False).flatten().numpy()
    if candidates.size == 0:
        raise ValueError("no SDE step to train: widen rl.sde_window or use more rl.num_steps")
    k = max(1, int(round(fraction * candidates.size)))
    rows = [np.random.default_rng(int(s)).permutation(candidates)[:k] for s in sample_seeds]
    return torch.as_tensor(np.stack(rows), dtype=torch.long)
