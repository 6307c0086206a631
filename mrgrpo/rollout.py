"""Rollouts: G trajectories per prompt, batched, with the per-step latents and log-probs training needs.

The conditioning of each prompt is computed once and repeated G times (``Conditioning.repeat``);
all B*G samples of a process go through the denoiser as one batch (CFG doubles it in the same
call). Steps outside the SDE window (and the last step, whose ``cps`` std is 0 and which is never
trained) are ODE steps: no log-prob, nothing stored; only the SDE steps keep ``x_t`` and float32
log-probs (:class:`Trajectories`). Which steps form the window is :mod:`mrgrpo.sde_window`'s job.

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
from mrgrpo.sde import SAMPLERS, noise_like, sde_step_with_logprob, step_mean_std
from mrgrpo.seeding import SeedStream, derive_seed

VelocityFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass
class Trajectories:
    """B*G sampled trajectories of one process: only the span of steps that training can use is stored.

    The stored span is the SDE steps ``first_step .. first_step + K - 1`` (the rollout's window, never
    the last denoising step); the ODE steps around it keep neither latents nor log-probs.

    Attributes:
        latents: ``[N, K + 1, C, h, w]`` float32: ``latents[:, j]`` is ``x`` before step ``first_step + j``.
        log_probs: ``[N, K]`` float32 log-probs of the stored steps.
        sigmas: ``[T + 1]`` float32 noise levels, 1 -> 0 (the whole schedule).
        sde_steps: ``[T]`` bool, the steps sampled stochastically (trainable).
        final: ``[N, C, h, w]`` float32 final latents (after step ``T - 1``).
        first_step: the denoising step of ``latents[:, 0]``.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    sde_steps: torch.Tensor
    final: torch.Tensor
    first_step: int = 0

    @property
    def stored_steps(self) -> range:
        """The denoising steps whose ``x_t``, ``x_{t+1}`` and log-prob are stored."""
        return range(self.first_step, self.first_step + self.log_probs.shape[1])

    def at(self, idx: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, x_{t+1}, log_prob_t)`` of samples ``idx [M]`` at their steps ``t [M]`` (schedule indices)."""
        j = t - self.first_step
        if bool((j < 0).any()) or bool((j >= self.log_probs.shape[1]).any()):
            raise IndexError(f"steps {t.tolist()} outside the stored steps {list(self.stored_steps)}")
        return self.latents[idx, j], self.latents[idx, j + 1], self.log_probs[idx, j]

    @staticmethod
    def concat(parts: Sequence[Trajectories]) -> Trajectories:
        """Concatenate trajectories of the same steps along the batch."""
        first = parts[0]
        if any(p.first_step != first.first_step or p.log_probs.shape[1] != first.log_probs.shape[1] for p in parts):
            raise ValueError("only trajectories that store the same steps can be concatenated")
        return Trajectories(
            torch.cat([p.latents for p in parts]),
            torch.cat([p.log_probs for p in parts]),
            first.sigmas,
            first.sde_steps,
            torch.cat([p.final for p in parts]),
            first.first_step,
        )


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
        sde_window: ``[start, end)`` of this rollout's SDE steps (:mod:`mrgrpo.sde_window`).
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
    sde_window: tuple[int, int] | None = None

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
    """Denoise ``init_latents [N, C, h, w]`` along ``sigmas [T + 1]``, recording the SDE steps.

    ``cond``/``uncond`` hold N samples (already repeated G times). ``sampler`` is used inside
    the SDE window ``[start, end)``, ``ode`` elsewhere (no log-prob computed, no latent stored).
    Returns :class:`Trajectories` on the latents' device.
    """
    if sampler not in SAMPLERS or sampler == "ode":
        raise ValueError(f"rollout sampler must be one of sde, cps, dance; got {sampler!r}")
    n = init_latents.shape[0]
    num_steps = sigmas.shape[0] - 1
    device = init_latents.device
    sde_mask = sde_step_mask(num_steps, sde_window)
    sde_idx = torch.nonzero(sde_mask).flatten().tolist()
    first, stored = (sde_idx[0], sde_idx[-1] - sde_idx[0] + 1) if sde_idx else (0, 0)
    latents = torch.empty((n, stored + 1, *init_latents.shape[1:]), dtype=torch.float32, device=device)
    log_probs = torch.zeros((n, stored), dtype=torch.float32, device=device)
    x = init_latents.float()
    sigma_max = float(sigmas[1])
    for t in range(num_steps):
        if first <= t <= first + stored:
            latents[:, t - first] = x
        s = torch.full((n,), float(sigmas[t]), dtype=torch.float32, device=device)
        with autocast():
            v = guided_velocity(velocity_fn, x, s, cond, uncond, cfg_scale)
        if sde_mask[t]:
            step = sde_step_with_logprob(
                x,
                v.float(),
                float(sigmas[t]),
                float(sigmas[t + 1]),
                sampler=sampler,
                noise_level=noise_level,
                generator=generators,
                sigma_max=sigma_max,
                cps_logprob=cps_logprob,
            )
            x = step.prev_sample
            log_probs[:, t - first] = step.log_prob
        else:  # ODE: no density, nothing stored; the noise is still drawn so that step t's noise is the same
            # whatever the window (a sample's SDE noise at a step does not depend on where the window is)
            x, _ = step_mean_std(x, v.float(), float(sigmas[t]), float(sigmas[t + 1]), sampler="ode")
            noise_like(x, generators)
        if progress is not None:
            progress(t)
    return Trajectories(latents, log_probs, sigmas.float().to(device), sde_mask.to(device), x, first)


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
