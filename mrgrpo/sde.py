"""Flow-matching samplers that return the log-probability of each step.

Convention (SD3 flow matching): ``x_sigma = (1 - sigma) * x0 + sigma * eps`` with sigma in
[0, 1] (1 = pure noise); the model predicts the velocity ``v ~ eps - x0``. A step goes from
``sigma`` to ``sigma_next < sigma`` and writes ``x' = mean + std * z`` with ``z ~ N(0, I)``.

Samplers (formulas in docs/training.md, section Samplers):

* ``ode``   - Euler step, ``std = 0`` (no log-prob; ``log_prob`` is returned as zeros).
* ``sde``   - Flow-GRPO's SDE, ``g = a * sqrt(s / (1 - s~))`` with ``s~ = sigma_max`` where
  ``s == 1``.
* ``cps``   - coefficients-preserving sampling, ``std = s' * sin(a * pi / 2)``.
* ``dance`` - DanceGRPO's SDE, ``std = a * sqrt(-d)``.

All arithmetic, and the returned ``prev_sample``, ``mean``, ``std`` and ``log_prob``, are
float32 whatever the dtype of the inputs: bf16 rounding (~2e-3) is far larger than the policy
clip range (1e-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from mrgrpo.devices import randn

SAMPLERS = ("ode", "sde", "cps", "dance")
#: default ``noise_level`` of each sampler when a recipe leaves it unset.
DEFAULT_NOISE_LEVEL = {"ode": 0.0, "sde": 0.7, "cps": 1.0, "dance": 0.3}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class SDEStep(NamedTuple):
    """One sampler step.

    Attributes:
        prev_sample: the next latent ``x'``, ``[B, C, H, W]`` float32 (drawn, or the given one).
        log_prob: mean log-density of ``prev_sample`` per sample, ``[B]`` float32.
        mean: the step's Gaussian mean, ``[B, C, H, W]`` float32.
        std: the step's standard deviation, ``[B, 1, 1, 1]`` float32 (0 for ``ode``).
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _per_sample(value: float | torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Broadcast a float or ``[B]`` tensor to ``[B, 1, ..., 1]`` float32 on ``ref``'s device."""
    t = torch.as_tensor(value, dtype=torch.float32, device=ref.device)
    if t.ndim == 0:
        t = t.expand(ref.shape[0])
    if t.ndim != 1 or t.shape[0] != ref.shape[0]:
        raise ValueError(f"sigma must be a float or a [B] tensor with B={ref.shape[0]}, got shape {tuple(t.shape)}")
    return t.view(-1, *([1] * (ref.ndim - 1)))


def noise_like(ref: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``ref [B, ...]``: from one generator, or one generator per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return randn(ref.shape, generator, device=ref.device)
    if len(generator) != ref.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {ref.shape[0]}")
    return torch.stack([randn(ref.shape[1:], g, device=ref.device) for g in generator])


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims of ``log N(x; mean, std^2)``; ``[B]`` float32."""
    x, mean, std = x.float(), mean.float(), std.float()
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, x.ndim)))


def step_mean_std(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    sampler: str = "sde",
    noise_level: float | None = None,
    sigma_max: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[B, C, H, W]`` and std ``[B, 1, 1, 1]`` (float32) of one sampler step.

    ``sigma_max`` is the ``s~`` that ``sde`` uses in place of ``sigma`` where ``sigma == 1``
    (Flow-GRPO passes the scheduler's ``sigmas[1]``); it defaults to ``sigma_next``, which is
    ``sigmas[1]`` on the first step of a schedule.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    a = DEFAULT_NOISE_LEVEL[sampler] if noise_level is None else float(noise_level)
    x = sample.float()
    v = velocity.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    d = s_next - s  # < 0
    zero = torch.zeros_like(s)

    if sampler == "ode":
        return x + d * v, zero
    if sampler == "sde":
        s_tilde = torch.where(s >= 1.0, _per_sample(sigma_next if sigma_max is None else sigma_max, x), s)
        g = a * torch.sqrt(s / (1.0 - s_tilde))
        mean = x * (1 + g**2 * d / (2 * s)) + v * (1 + g**2 * (1 - s) / (2 * s)) * d
        return mean, g * torch.sqrt(-d)
    x0_hat = x - s * v
    if sampler == "cps":
        std = s_next * math.sin(a * math.pi / 2)
        x1_hat = x + (1 - s) * v
        mean = (1 - s_next) * x0_hat + torch.sqrt(torch.clamp(s_next**2 - std**2, min=0.0)) * x1_hat
        return mean, std
    # dance
    mean = x + (v + a**2 * (x - (1 - s) * x0_hat) / (2 * (s**2 + 1e-8))) * d
    return mean, a * torch.sqrt(-d) + zero


def sde_step_with_logprob(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    sampler: str = "sde",
    noise_level: float | None = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    sigma_max: float | torch.Tensor | None = None,
    cps_logprob: str = "gaussian",
) -> SDEStep:
    """Take (or score) one step of ``sampler`` and return its log-probability.

    Args:
        sample: current latents ``x`` at ``sigma``, ``[B, C, H, W]`` (any float dtype).
        velocity: model output ``v`` at ``(x, sigma)``, ``[B, C, H, W]``.
        sigma, sigma_next: noise levels of this step, floats or ``[B]``; ``sigma_next < sigma``.
        sampler: ``"ode" | "sde" | "cps" | "dance"``.
        noise_level: ``a`` in the formulas; ``None`` takes the sampler's default
            (:data:`DEFAULT_NOISE_LEVEL`).
        prev_sample: if given, score this ``x'`` instead of drawing one (training re-scoring).
        generator: a generator, or one per sample, for the drawn noise.
        sigma_max: ``s~`` of the ``sde`` sampler where ``sigma == 1`` (see :func:`step_mean_std`).
        cps_logprob: ``"gaussian"`` (proper log-density) or ``"unnormalised"``
            (``-mean((x' - mean)^2)``, as in the DeepGen and Flow-GRPO code) for ``cps``.

    Returns:
        :class:`SDEStep` with float32 tensors; ``log_prob`` is ``[B]`` (zeros when ``std == 0``).
    """
    mean, std = step_mean_std(
        sample, velocity, sigma, sigma_next, sampler=sampler, noise_level=noise_level, sigma_max=sigma_max
    )
    if prev_sample is None:
        prev_sample = mean + std * noise_like(mean, generator)
    else:
        if prev_sample.shape != mean.shape:
            raise ValueError(f"prev_sample shape {tuple(prev_sample.shape)} != sample shape {tuple(mean.shape)}")
        prev_sample = prev_sample.float()
    if sampler == "cps" and cps_logprob not in ("gaussian", "unnormalised"):
        raise ValueError(f"cps_logprob must be 'gaussian' or 'unnormalised', got {cps_logprob!r}")
    if sampler == "cps" and cps_logprob == "unnormalised":
        log_prob = -((prev_sample - mean) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    else:
        # ODE steps (or a zero noise level) have no density: those samples get 0, per sample, so
        # one std == 0 sample (e.g. sigma_next == 0 under cps in a [B] sigma batch) does not zero
        # the log-probs of the others.
        has_density = std.reshape(-1) > 0
        safe_std = torch.where(std > 0, std, torch.ones_like(std))
        log_prob = torch.where(has_density, gaussian_log_prob(prev_sample, mean, safe_std), 0.0)
    return SDEStep(prev_sample, log_prob, mean, std)
