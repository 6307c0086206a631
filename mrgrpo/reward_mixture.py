"""The rewards of a run and how they score a batch of images: :class:`RewardMixture`.

Every prompt source carries a reward mixture (``{reward name: weight}``). A mixture scores an
image with exactly the rewards its source weighs (weight > 0); the other rewards are not called
for it (their ``valid`` is False there and their weight 0). Rewards that wait on a server
(``is_remote``) run concurrently in the mixture's thread pool while the local ones run in the
calling thread. A reward that compares the images of a group (``needs_groups``) is called with
whole groups (:func:`mrgrpo.rewards.base.group_chunks`).

The mixture owns the built rewards and the pool: :meth:`RewardMixture.close` shuts the pool and
calls every reward's ``close()``; the trainer calls it when a run ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mrgrpo.advantages import mixture_weights
from mrgrpo.config import RecipeError, RunConfig
from mrgrpo.errors import MrgrpoError
from mrgrpo.rewards.base import group_chunks


class RewardFailure(MrgrpoError, RuntimeError):
    """A reward could not score images and ``rl.reward_failure`` is ``stop``."""


class _Record(Protocol):  # what the mixture reads from a prompt record
    prompt: str
    source: str
    fields: dict[str, Any]


def _metadata(record: _Record, group_id: int) -> dict[str, Any]:
    """A reward's metadata of one image: the record's fields, its group, source and prompt, and the paths of
    its reference images (``images``, editing: e.g. the source image of ``image_similarity``)."""
    meta = dict(record.fields, group_id=group_id, source=record.source, prompt=record.prompt)
    refs = getattr(record, "images", None)
    if refs:
        meta["images"] = [str(p) for p in refs]
    return meta


@dataclass
class ScoredRewards:
    """Rewards of N images.

    Attributes:
        names: the reward names, the column order of ``weights`` (sorted, the order
            :func:`mrgrpo.advantages.compute_advantages` expects of a weight tensor).
        scores: ``{name: [N] float32}`` (0 where not valid).
        valid: ``{name: [N] bool}``: scored by that reward (False where its weight is 0 or it failed).
        weights: ``[N, R]`` float32 mixture weights, columns in ``names`` order.
        failures: ``{name: images it failed to score}``.
    """

    names: list[str]
    scores: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    weights: torch.Tensor
    failures: dict[str, int]

    @staticmethod
    def concat(parts: Sequence[ScoredRewards]) -> ScoredRewards:
        """The rewards of consecutive batches of images as one (scores, masks and weights concatenated in order,
        failures summed)."""
        names = parts[0].names
        if any(p.names != names for p in parts):
            raise ValueError("only rewards of the same reward names can be concatenated")
        return ScoredRewards(
            list(names),
            {k: torch.cat([p.scores[k] for p in parts]) for k in names},
            {k: torch.cat([p.valid[k] for p in parts]) for k in names},
            torch.cat([p.weights for p in parts]),
            {k: sum(p.failures.get(k, 0) for p in parts) for k in names},
        )


class RewardMixture:
    """The run's rewards, their thread pool and their ``close()``.

    Args:
        rewards: ``{name: Reward}``; every name in ``names`` must be present.
        names: the rewards the mixtures use; stored sorted (the weight matrix's column order).
        batch_sizes: images per call of each reward (default 64).
        failure: ``"mask"`` (failed images are invalid and counted) or ``"stop"`` (raise :class:`RewardFailure`).
    """

    def __init__(
        self,
        rewards: Mapping[str, Any],
        names: Sequence[str],
        *,
        batch_sizes: Mapping[str, int] | None = None,
        failure: str = "mask",
    ):
        self.names = sorted(set(names))
        missing = [k for k in self.names if k not in rewards]
        if missing:
            raise RecipeError(
                f"rewards {missing} are used by the mixtures but were not built. Fix: define them under `rewards:`."
            )
        self.rewards = dict(rewards)
        self.batch_sizes = dict(batch_sizes or {})
        self.failure = failure
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.rewards)))
        self.closed = False

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        names: Sequence[str],
        rewards: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> RewardMixture:
        """Build every reward the recipe defines (unless ``rewards`` are given) and wrap them.

        Model-based rewards that take a ``device`` argument are built on ``device`` (the trainer's,
        e.g. ``cuda:N`` on rank N) unless the recipe sets one; a factory that refuses its kwargs
        names the recipe field ``rewards.<name>``.
        """
        if rewards is None:
            from mrgrpo.preflight import built_from
            from mrgrpo.rewards.base import build_reward

            def build(key: str, spec: Any) -> Any:
                return built_from(
                    f"rewards.{key}",
                    f"the reward {spec.name or key!r}",
                    lambda: build_reward(spec.name or key, spec.kwargs, label=key, device=device),
                    spec.kwargs,
                )

            rewards = {key: build(key, spec) for key, spec in sorted(cfg.rewards.items())}
        return cls(
            rewards,
            names,
            batch_sizes={k: spec.batch_size for k, spec in cfg.rewards.items()},
            failure=cfg.rl.reward_failure,
        )

    def weights(
        self, records: Sequence[_Record], mixtures: Mapping[str, Mapping[str, float]], per_prompt: int
    ) -> torch.Tensor:
        """``[N, R]`` weights of ``per_prompt`` consecutive images per record (``mixtures``: source -> mixture)."""
        return mixture_weights([mixtures[r.source] for r in records for _ in range(per_prompt)], self.names)

    def score(
        self,
        images: Sequence[Any],
        records: Sequence[_Record],
        group_ids: torch.Tensor,
        mixtures: Mapping[str, Mapping[str, float]],
        per_prompt: int,
    ) -> ScoredRewards:
        """Score ``images`` (PIL, ``per_prompt`` consecutive images per record, ``group_ids [N]``).

        Each image is scored by the rewards its record's source weighs; metadata carries the
        record's fields plus ``group_id``, ``source`` and ``prompt``.
        """
        weights = self.weights(records, mixtures, per_prompt)
        prompts = [r.prompt for r in records for _ in range(per_prompt)]
        meta = [
            _metadata(r, int(g)) for r, g in zip([r for r in records for _ in range(per_prompt)], group_ids.tolist())
        ]
        n = len(images)
        if weights.shape[0] != n:
            raise ValueError(f"{n} images for {len(records)} records x {per_prompt} per prompt")
        gids = group_ids.tolist()

        def run_one(j: int, name: str) -> tuple[str, torch.Tensor, torch.Tensor, int]:
            idx = [i for i in range(n) if weights[i, j] > 0]
            scores = torch.zeros(n)
            valid = torch.zeros(n, dtype=torch.bool)
            failures = 0
            reward = self.rewards[name]
            bs = self.batch_sizes.get(name, 64)
            groups = [gids[i] for i in idx] if getattr(reward, "needs_groups", False) else None
            for chunk_pos in group_chunks(groups, bs, len(idx)):
                chunk = [idx[p] for p in chunk_pos]
                try:
                    out = reward([images[i] for i in chunk], [prompts[i] for i in chunk], [meta[i] for i in chunk])
                except Exception as exc:  # a failed call masks its images (or stops the run)
                    if self.failure == "stop":
                        raise RewardFailure(
                            f"reward {name!r} failed: {exc}. Set rl.reward_failure: mask to continue without it."
                        ) from exc
                    failures += len(chunk)
                    continue
                scores[chunk] = out.scores.float()
                valid[chunk] = out.valid
                failures += int(out.details.get("failures", 0)) if isinstance(out.details, dict) else 0
            if failures and self.failure == "stop":
                raise RewardFailure(
                    f"reward {name!r} could not score {failures} image(s). Set rl.reward_failure: mask to continue "
                    "without them."
                )
            return name, scores, valid, failures

        remote = [j for j, k in enumerate(self.names) if getattr(self.rewards[k], "is_remote", False)]
        local = [j for j in range(len(self.names)) if j not in remote]
        futures = [self._pool.submit(run_one, j, self.names[j]) for j in remote]
        results = [run_one(j, self.names[j]) for j in local] + [f.result() for f in futures]
        scores, valid, failures = {}, {}, {}
        for name, s, v, f in results:
            scores[name], valid[name], failures[name] = s, v, f
        return ScoredRewards(list(self.names), scores, valid, weights, failures)

    def close(self) -> None:
        """Shut the thread pool and call ``close()`` of every reward (once; later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for reward in self.rewards.values():
            close = getattr(reward, "close", None)
            if callable(close):
                close()
