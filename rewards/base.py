"""The reward interface: images + prompts in, one score per image out.

A reward is any callable ``reward(images, prompts, metadata=None) -> RewardOutput``. Scores
are float32 ``[N]``; ``valid`` marks images the reward could score. An image it could not
score (no quoted text for OCR, an unparsable judge answer, a server error after retries) is
``valid=False``: the trainer masks it out of the advantages, it is never a silent 0.

Plain functions ``f(images, prompts, **kw) -> list[float]`` are accepted through
:func:`as_reward`; ``None`` or NaN entries in their output mean "could not score".
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RewardOutput:
    """Scores of N images.

    Attributes:
        scores: ``[N]`` float32 (value at invalid positions is meaningless; 0 by convention).
        valid: ``[N]`` bool, False where the reward could not score the image.
        details: anything worth logging (raw judge answers, OCR strings, failure reasons).
    """

    scores: torch.Tensor
    valid: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
        if self.valid is None:
            self.valid = torch.ones_like(self.scores, dtype=torch.bool)
        else:
            self.valid = torch.as_tensor(self.valid, dtype=torch.bool).reshape(-1)
        if self.valid.shape != self.scores.shape:
            raise ValueError(f"valid has shape {tuple(self.valid.shape)}, scores {tuple(self.scores.shape)}")
        self.scores = torch.where(self.valid, torch.nan_to_num(self.scores), torch.zeros_like(self.scores))


class Reward:
    """Base class of rewards. Subclasses implement :meth:`score`.

    Class attributes the trainer reads:
        name: registry name (for logs).
        is_remote: True for rewards that wait on a server; the trainer runs those concurrently.
        needs_groups: True when the reward compares images of a group (pairwise judge);
            it then reads ``metadata[i]["group_id"]``.
    """

    name: str = "reward"
    is_remote: bool = False
    needs_groups: bool = False

    def __call__(self, images: list[Any], prompts: list[str], metadata: list[dict] | None = None) -> RewardOutput:
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: got {len(images)} images but {len(prompts)} prompts")
        if metadata is not None and len(metadata) != len(images):
            raise ValueError(f"{self.name}: got {len(metadata)} metadata entries for {len(images)} images")
        out = self.score(images, prompts, metadata if metadata is not None else [{} for _ in images])
        if out.scores.shape[0] != len(images):
            raise ValueError(f"{self.name}: returned {out.scores.shape[0]} scores for {len(images)} images")
        return out

    def score(self, images: list[Any], prompts: list[str], metadata: list[dict]) -> RewardOutput:
        raise NotImplementedError

    def close(self) -> None:
        """Release clients / sessions; called by the trainer at exit."""


class FunctionReward(Reward):
    """Wraps ``f(images, prompts, **kw) -> list[float | None]`` (``kw`` gets ``metadata`` if accepted)."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "function_reward"))
        try:
            params = inspect.signature(fn).parameters
            self._pass_metadata = "metadata" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            self._pass_metadata = False

    def score(self, images: list[Any], prompts: list[str], metadata: list[dict]) -> RewardOutput:
        raw = self.fn(images, prompts, metadata=metadata) if self._pass_metadata else self.fn(images, prompts)
        if isinstance(raw, RewardOutput):
            return raw
        values = raw.tolist() if isinstance(raw, torch.Tensor) else list(raw)
        valid = [v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values]
        scores = [float(v) if ok else 0.0 for v, ok in zip(values, valid)]
        return RewardOutput(torch.tensor(scores), torch.tensor(valid))


def as_reward(obj: Any, name: str | None = None) -> Reward:
    """A :class:`Reward` from a Reward instance or a plain callable."""
    if isinstance(obj, Reward):
        if name:
            obj.name = name
        return obj
    if callable(obj):
        return FunctionReward(obj, name)
    raise TypeError(f"{obj!r} is neither a Reward nor a callable f(images, prompts) -> list[float]")


def build_reward(
    name: str, kwargs: dict[str, Any] | None = None, *, label: str | None = None, device: Any = None
) -> Reward:
    """Build a registered reward (or dotted path) and wrap it as a :class:`Reward`.

    A registered factory that is a plain scoring function (``f(images, prompts)``) is wrapped as is;
    classes and factories are called with ``kwargs`` first. ``device`` (the trainer's device, e.g.
    ``cuda:3`` on rank 3) is passed to factories that take a ``device`` argument the recipe left unset,
    so a model-based reward runs on its process's own accelerator.
    """
    from mrgrpo.registry import REWARDS

    factory = REWARDS.get(name)
    kwargs = dict(kwargs or {})
    if (
        device is not None
        and "device" not in kwargs
        and (isinstance(factory, type) or getattr(factory, "_mrgrpo_factory", False))
    ):
        accepted = accepted_kwargs(factory)
        if accepted is not None and "device" in accepted:
            kwargs["device"] = str(device)
    if isinstance(factory, type) or kwargs or getattr(factory, "_mrgrpo_factory", False):
        check_kwargs(factory, kwargs, name)
        obj = factory(**kwargs)
    else:
        obj = factory
    return as_reward(obj, label or name)


def accepted_kwargs(factory: Callable[..., Any]) -> list[str] | None:
    """Keyword names ``factory`` accepts (its ``__init__`` for a class); None when it takes ``**kwargs`` or has no
    signature."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any], name: str) -> None:
    """Raise a clear TypeError for keyword arguments ``factory`` does not accept."""
    known = accepted_kwargs(factory)
    if known is None:
        return
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(
            f"reward {name!r} got unknown argument(s) {', '.join(map(repr, unknown))}. "
            f"It accepts: {', '.join(known) or '(none)'}."
        )


def batched(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Consecutive chunks of at most ``size`` items."""
    return [seq[i : i + size] for i in range(0, len(seq), max(1, size))]


def group_chunks(group_ids: Sequence[Hashable] | None, max_size: int, n: int | None = None) -> list[list[int]]:
    """Indices ``0..N-1`` cut into chunks of at most ``max_size`` that keep groups whole.

    Args:
        group_ids: ``[N]`` group of each item, or ``None`` for plain consecutive chunks (then give ``n``).
        max_size: the most items a chunk holds; a group bigger than it forms a chunk of its own.
        n: number of items when ``group_ids`` is ``None``.

    Returns:
        Index lists. With groups: the groups in order of first appearance, packed greedily (a
        group goes into the current chunk while the chunk stays within ``max_size``), each
        group's indices in their original order. Used by the trainer's reward scoring, the
        remote reward client and the reward server, so a group-wise reward (a pairwise judge)
        always sees every image of a group in one call.
    """
    size = max(1, int(max_size))
    if group_ids is None:
        if n is None:
            raise ValueError("group_chunks needs n when group_ids is None")
        return [list(range(i, min(n, i + size))) for i in range(0, n, size)]
    groups: dict[Hashable, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    chunks: list[list[int]] = []
    cur: list[int] = []
    for members in groups.values():
        if cur and len(cur) + len(members) > size:
            chunks.append(cur)
            cur = []
        cur = cur + members
    return chunks + ([cur] if cur else [])
