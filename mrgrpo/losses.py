"""MR-GRPO losses: clipped importance-ratio policy loss, KL to the reference, flow matching,
and :func:`mrgrpo_step_loss`, the one step loss the trainer backpropagates.

Formulas in ``docs/training.md`` (Losses). All reductions are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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


def flow_matching_step_loss(model: Any, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """The flow-matching (SFT) loss of one image batch through a (possibly wrapped) policy, a scalar.

    ``model("flow_matching_loss", batch, generator=...)`` dispatches to the policy's
    :meth:`~mrgrpo.policies.base.DiffusionPolicy.flow_matching_loss` through the accelerate/DDP
    wrapper, so gradients are synchronised like those of any forward. The SFT trainer and the
    auxiliary term of MR-GRPO both call this one function.
    """
    return model("flow_matching_loss", batch, generator=generator)


@dataclass
class StepLoss:
    """What one trained timestep of one micro-batch contributes (cf. torchtune's ``GRPOStats``).

    Attributes:
        loss: scalar to back-propagate: ``(1 - lambda) * (L_policy + beta * mean KL)``, plus
            ``lambda * accumulation_steps * L_sft`` on the micro-batch that carries the SFT batch.
        policy_loss: detached scalar ``L_policy`` (clipped surrogate, before any scaling).
        kl: detached scalar mean KL of the micro-batch, or ``None`` when no KL was given.
        sft_loss: detached scalar ``L_sft``, or ``None`` when this micro-batch carries no SFT batch.
        ratio: ``[B]`` detached float32 importance ratios ``exp(log p - log p_old)``.
        clipped_low: ``[B]`` bool, ratio below ``1 - e_low``.
        clipped_high: ``[B]`` bool, ratio above ``1 + e_high``.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor | None
    sft_loss: torch.Tensor | None
    ratio: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor

    @property
    def clip_frac(self) -> float:
        """Fraction of samples whose ratio lies outside the clip range (either side)."""
        return (self.clipped_low | self.clipped_high).float().mean().item()


def mrgrpo_step_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float | tuple[float, float],
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    sft_loss: torch.Tensor | None = None,
    sft_coef: float = 0.0,
    accumulation_steps: int = 1,
) -> StepLoss:
    """The MR-GRPO loss of one trained timestep of one micro-batch: the ONE loss the trainer backpropagates.

    ``L = (1 - lambda) * (L_policy + beta * mean_i KL_i) [+ lambda * n_acc * L_sft]``, where

    * ``L_policy`` is :func:`clipped_policy_loss` of ``log_prob``, ``old_log_prob``, ``advantages``
      (all ``[B]``, float32);
    * ``kl`` is the per-sample KL ``[B]`` (:func:`velocity_kl` or :func:`mean_kl`), used when ``beta > 0``;
    * ``lambda = sft_coef`` scales the GRPO part whenever it is positive (also on micro-batches
      without an SFT batch, so the policy gradient's scale does not depend on the SFT schedule);
    * ``sft_loss`` (a scalar, :func:`flow_matching_step_loss`) is given on ONE micro-batch of the
      optimizer step. accelerate divides every micro-batch loss by the accumulation count
      ``n_acc = accumulation_steps`` (backward passes per optimizer step); multiplying the SFT term
      by it makes the step's gradient exactly ``(1 - lambda) * mean grad(L_grpo) + lambda * grad(L_sft)``.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    policy = clipped_policy_loss(log_prob, old_log_prob, advantages, clip_range)
    loss = policy
    kl_mean = None
    if kl is not None:
        kl_mean = kl.float().mean()
        if beta > 0:
            loss = loss + beta * kl_mean
    if sft_coef > 0:
        loss = (1.0 - sft_coef) * loss
        if sft_loss is not None:
            loss = loss + sft_coef * accumulation_steps * sft_loss.float()
    low, high = _clip_bounds(clip_range)
    with torch.no_grad():
        ratio = torch.exp(log_prob.detach().float() - old_log_prob.detach().float())
    return StepLoss(
        loss=loss,
        policy_loss=policy.detach(),
        kl=kl_mean.detach() if kl_mean is not None else None,
        sft_loss=sft_loss.detach().float() if sft_loss is not None and sft_coef > 0 else None,
        ratio=ratio,
        clipped_low=ratio < 1.0 - low,
        clipped_high=ratio > 1.0 + high,
    )


class StepLossStats:
    """Collects :class:`StepLoss` outputs of the backward passes of one rollout into metrics.

    ``metrics()`` gives ``loss/policy``, ``loss/kl``, ``loss/sft`` (means over the passes that had
    them), ``ratio/mean`` (mean of the per-pass means), ``ratio/std`` (over every sample of every
    pass), ``ratio/min`` / ``ratio/max`` (over all samples), ``clip_frac`` and its two sides
    ``clip_frac/low`` (ratio < 1 - e_low) and ``clip_frac/high`` (ratio > 1 + e_high) (means of
    the per-pass fractions).
    """

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = {}
        self._min = math.inf
        self._max = -math.inf
        self._moments = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares of the ratios

    def _put(self, key: str, value: float) -> None:
        self._values.setdefault(key, []).append(value)

    def add(self, out: StepLoss) -> None:
        """Record one pass."""
        self._put("loss/policy", out.policy_loss.item())
        if out.kl is not None:
            self._put("loss/kl", out.kl.item())
        if out.sft_loss is not None:
            self._put("loss/sft", out.sft_loss.item())
        self._put("ratio/mean", out.ratio.mean().item())
        self._min = min(self._min, out.ratio.min().item())
        self._max = max(self._max, out.ratio.max().item())
        self._put("clip_frac", out.clip_frac)
        self._put("clip_frac/low", out.clipped_low.float().mean().item())
        self._put("clip_frac/high", out.clipped_high.float().mean().item())
        r = out.ratio.detach().double().cpu()
        self._moments += torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64), r.sum(), (r * r).sum()])

    def metrics(self) -> dict[str, float]:
        """The collected means (empty when nothing was recorded)."""
        out = {key: float(sum(v) / len(v)) for key, v in self._values.items() if v}
        if self._values:
            out["ratio/min"] = self._min
            out["ratio/max"] = self._max
            n, s, sq = self._moments.tolist()
            if n > 1:
                mean = s / n
                out["ratio/std"] = math.sqrt(max(0.0, (sq - n * mean * mean) / (n - 1)))
        return out
