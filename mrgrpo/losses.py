"""MR-GRPO losses: clipped importance-ratio policy loss, KL to the reference, flow matching.

Formulas in ``shared/MATH.md`` (Loss). All reductions are float32.
"""

from __future__ import annotations

import torch


def _clip_bounds(clip_range: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(clip_range, (tuple, list)):
        low, high = clip_range
    else:
        low = high = clip_range
    if low < 0 or high < 0:
        raise ValueError(f"clip_range must be non-negative, got {clip_range!r}")
    return float(low), float(high)


def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float | tuple[float, float],
) -> torch.Tensor:
    """PPO-style clipped surrogate, a scalar.

    ``mean_i max(-A_i * r_i, -A_i * clip(r_i, 1 - e_low, 1 + e_high))`` with
    ``r_i = exp(log_prob_i - old_log_prob_i)``; all inputs ``[B]``.
    ``clip_range`` is ``e`` or an asymmetric ``(e_low, e_high)`` pair.
    """
    low, high = _clip_bounds(clip_range)
    adv = advantages.float()
    ratio = torch.exp(log_prob.float() - old_log_prob.float())
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    return torch.maximum(unclipped, clipped).mean()


@torch.no_grad()
def ratio_stats(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, clip_range: float | tuple[float, float]
) -> dict[str, float]:
    """Diagnostics of the importance ratio: mean, min, max, and the fraction outside the clip."""
    low, high = _clip_bounds(clip_range)
    ratio = torch.exp(log_prob.detach().float() - old_log_prob.float())
    clipped = (ratio < 1.0 - low) | (ratio > 1.0 + high)
    return {
        "ratio/mean": ratio.mean().item(),
        "ratio/min": ratio.min().item(),
        "ratio/max": ratio.max().item(),
        "clip_frac": clipped.float().mean().item(),
    }


def _scaled_mse(a: torch.Tensor, b: torch.Tensor, std: torch.Tensor | float | None) -> torch.Tensor:
    diff = (a.float() - b.float()) ** 2
    per_sample = diff.mean(dim=tuple(range(1, diff.ndim)))
    if std is None:
        return per_sample
    s = torch.as_tensor(std, dtype=torch.float32, device=per_sample.device).reshape(-1)
    return per_sample / (2 * s**2 + 1e-7)


def velocity_kl(v_policy: torch.Tensor, v_ref: torch.Tensor, std: torch.Tensor | float | None = None) -> torch.Tensor:
    """Velocity-space KL surrogate per sample, ``[B]``.

    ``mean((v_policy - v_ref)^2)`` over non-batch dims, divided by ``2 * std^2 + 1e-7`` when the
    step's ``std`` (float, ``[B]`` or ``[B, 1, 1, 1]``) is given.
    """
    return _scaled_mse(v_policy, v_ref, std)


def mean_kl(mu_policy: torch.Tensor, mu_ref: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """x-space KL between the step Gaussians ``N(mu_policy, std^2)`` and ``N(mu_ref, std^2)``, ``[B]``."""
    return _scaled_mse(mu_policy, mu_ref, std)


def sample_flow_sigmas(
    n: int, *, shift: float = 3.0, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Training noise levels ``[n]`` float32 on ``device`` from the law ``s = k u / (1 + (k - 1) u)``, ``u ~ U[0, 1)``.

    ``u`` is drawn on the generator's own device, so the levels depend on its seed only.
    """
    from mrgrpo.devices import rand

    u = rand((n,), generator, device=device)
    return shift * u / (1 + (shift - 1) * u)


def add_flow_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_s = (1 - s) x0 + s eps`` with ``sigma: [B]``; keeps ``x0``'s dtype."""
    s = sigma.to(x0.device, torch.float32).view(-1, *([1] * (x0.ndim - 1)))
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss, scalar: per-image ``mean((v_pred - (noise - x0))^2)``, then batch mean."""
    target = noise.float() - x0.float()
    per_image = ((v_pred.float() - target) ** 2).mean(dim=tuple(range(1, v_pred.ndim)))
    return per_image.mean()


def grpo_step_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float | tuple[float, float],
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """``L_policy + beta * mean(KL)`` for one trained timestep, a scalar."""
    loss = clipped_policy_loss(log_prob, old_log_prob, advantages, clip_range)
    if kl is not None and beta:
        loss = loss + beta * kl.float().mean()
    return loss


def mix_sft_loss(grpo_loss: torch.Tensor, sft_loss: torch.Tensor | None, coef: float) -> torch.Tensor:
    """``(1 - lambda) * L_grpo + lambda * L_sft``; ``L_grpo`` alone when there is no SFT term this step."""
    if sft_loss is None or coef == 0:
        return grpo_loss
    return (1.0 - coef) * grpo_loss + coef * sft_loss
