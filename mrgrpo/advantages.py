"""Group-relative advantages for multi-reward GRPO.

``gdpo`` (MR-GRPO, default): every reward is z-scored within its group on its own, the
z-scores are mixed with per-sample weights, the mix is normalised over the global batch (all
processes) and clipped. ``grpo``: the weighted reward sum is z-scored within its group.
See ``docs/training.md`` (Advantages) for the formulas.

Groups never span processes, so group statistics are local; batch statistics are summed across
processes through ``reduce_fn`` (an all-reduce SUM of a small tensor), e.g.
:func:`accelerate_sum_reduce`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

ReduceFn = Callable[[torch.Tensor], torch.Tensor]
ADVANTAGE_MODES = ("gdpo", "grpo")


def mixture_weights(mixtures: Sequence[Mapping[str, float]], names: Sequence[str]) -> torch.Tensor:
    """THE reward weight matrix: ``[N, R]`` float32, row i = ``mixtures[i]``, column j = reward ``names[j]``.

    ``names`` is given explicitly and fixes the column order; a reward a mixture does not name
    weighs 0, and a mixture naming a reward outside ``names`` is an error (its scores would be lost).
    """
    names = list(names)
    rows = []
    for i, mix in enumerate(mixtures):
        unknown = sorted(set(mix) - set(names))
        if unknown:
            raise ValueError(f"mixture {i} weighs rewards {unknown} that are not scored; rewards scored: {names}")
        rows.append([float(mix.get(k, 0.0)) for k in names])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(names))


def weight_matrix(weights: torch.Tensor | Mapping[str, float], names: list[str], n: int) -> torch.Tensor:
    """Per-sample weights ``[N, R]`` with columns in ``names`` order: one mixture for every sample
    (through :func:`mixture_weights`), or an ``[N, R]`` tensor checked for its shape."""
    if isinstance(weights, Mapping):
        try:
            return mixture_weights([weights] * n, names)
        except ValueError:
            unknown = sorted(set(weights) - set(names))
            raise ValueError(f"weights name rewards {unknown} that have no scores; rewards scored: {names}") from None
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (n, len(names)):
        raise ValueError(f"weights must be [N, R] = [{n}, {len(names)}] (columns {names}), got {tuple(w.shape)}")
    return w


def group_zscore(
    values: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """``(x - mean_g) / (std_g + eps)`` within each group over the valid members; ``[N]`` float32.

    ``std`` is the unbiased one. Invalid members, groups with fewer than two valid members and
    groups whose valid members all have the same value (no spread to measure) get 0.
    """
    x = values.float()
    ok = torch.ones_like(x, dtype=torch.bool) if valid is None else valid.bool().to(x.device)
    out = torch.zeros_like(x)
    for g in torch.unique(group_ids):
        members = (group_ids == g) & ok
        if int(members.sum()) < 2:
            continue
        xs = x[members]
        if bool(xs.max() == xs.min()):
            # identical rewards carry no signal: exactly 0. Computed, float32 rounding of the mean
            # leaves ~1e-3 after dividing by eps, which the batch normalisation of gdpo then
            # blows up to O(1) advantages when every group of the batch is constant.
            continue
        out[members] = (xs - xs.mean()) / (xs.std() + eps)
    return out


def batch_normalize(
    values: torch.Tensor, include: torch.Tensor, *, eps: float = 1e-4, reduce_fn: ReduceFn | None = None
) -> torch.Tensor:
    """``(x - mean_B) / (std_B + eps)`` over the included samples of the GLOBAL batch.

    ``reduce_fn`` sums a tensor across processes (identity when ``None``): the count, sum and
    sum of squares are reduced, so every rank uses the same mean and unbiased std. Excluded
    samples get 0.
    """
    x = values.double()
    m = include.to(x.device).double()
    stats = torch.stack([m.sum(), (x * m).sum(), (x * x * m).sum()])
    if reduce_fn is not None:
        stats = reduce_fn(stats)
    count, total, total_sq = stats.unbind()
    if count < 1:
        return torch.zeros_like(values, dtype=torch.float32)
    mean = total / count
    var = (total_sq - count * mean**2) / torch.clamp(count - 1, min=1)
    std = torch.sqrt(torch.clamp(var, min=0.0))
    return (((x - mean) / (std + eps)) * m).float()


def compute_advantages(
    rewards: Mapping[str, torch.Tensor],
    weights: torch.Tensor | Mapping[str, float],
    group_ids: torch.Tensor,
    *,
    mode: str = "gdpo",
    eps: float = 1e-4,
    clip: float | None = 5.0,
    valid: Mapping[str, torch.Tensor] | None = None,
    reduce_fn: ReduceFn | None = None,
) -> torch.Tensor:
    """Advantages ``[N]`` float32 of N images in groups (one prompt per group).

    Args:
        rewards: ``{name: scores [N]}``.
        weights: ``[N, R]`` per-sample weights with columns in ``sorted(rewards)`` order, or one
            ``{name: weight}`` for every sample (missing names weigh 0).
        group_ids: ``[N]`` integer group of each image; a group lives on one process.
        mode: ``"gdpo"`` (per-reward group normalisation, then batch normalisation) or ``"grpo"``.
        eps: added to every std.
        clip: advantages are clipped to ``[-clip, clip]`` (``None``: no clip).
        valid: ``{name: bool [N]}``; a failed score is excluded from its group's statistics and
            contributes 0 (``gdpo``); under ``grpo`` an image with any failed weighted reward gets 0.
        reduce_fn: all-reduce SUM across processes for the batch statistics (``gdpo``).
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
    names = sorted(rewards)
    if not names:
        raise ValueError("compute_advantages needs at least one reward")
    n = int(group_ids.shape[0])
    for k in names:
        if rewards[k].shape != (n,):
            raise ValueError(f"reward {k!r} has shape {tuple(rewards[k].shape)}, expected [{n}]")
    device = rewards[names[0]].device
    w = weight_matrix(weights, names, n).to(device)
    group_ids = group_ids.to(device)
    ok = {
        k: (
            torch.ones(n, dtype=torch.bool, device=device)
            if valid is None or k not in valid
            else valid[k].to(device).bool()
        )
        for k in names
    }

    if mode == "gdpo":
        adv = torch.zeros(n, dtype=torch.float32, device=device)
        any_valid = torch.zeros(n, dtype=torch.bool, device=device)
        for j, k in enumerate(names):
            adv = adv + w[:, j] * group_zscore(rewards[k], group_ids, ok[k], eps)
            any_valid |= ok[k] & (w[:, j] != 0)
        adv = batch_normalize(adv, any_valid, eps=eps, reduce_fn=reduce_fn)
    else:
        stacked = torch.stack([rewards[k].float().to(device) for k in names], dim=1)
        usable = torch.stack([ok[k] | (w[:, j] == 0) for j, k in enumerate(names)], dim=1).all(dim=1)
        total = (torch.nan_to_num(stacked) * w).sum(dim=1)
        adv = group_zscore(total, group_ids, usable, eps)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv


def accelerate_sum_reduce(accelerator) -> ReduceFn:
    """A ``reduce_fn`` summing across the processes of an ``accelerate.Accelerator``."""

    def _reduce(t: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(t.to(accelerator.device), reduction="sum").to(t.device)

    return _reduce
