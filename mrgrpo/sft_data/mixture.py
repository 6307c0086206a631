"""The SFT mixture: one endless, seeded, resumable stream of batches over any sources.

Batch ``n``: its kind is drawn with probabilities ``t2i_edit_ratio`` (kinds without sources drop
out), its source among that kind's sources by ``weight``, both from ``(seed, n)`` only (all ranks
train the same kind at the same step); the batch is that source's next same-size bucket.
Text-to-image captions are replaced by ``""`` with probability ``caption_dropout`` (from
``(seed, rank, n)``); editing never. The mixture sees every source through
:class:`~mrgrpo.sft_data.source.SourceStream` only: it never asks what kind of files a source reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mrgrpo.config import RecipeError
from mrgrpo.sft_data.batch import SFTBatch, collate
from mrgrpo.sft_data.order import TAG_DROP, TAG_MIX, rng
from mrgrpo.sft_data.samples import DataStats
from mrgrpo.sft_data.source import SourceStream


class SFTStream:
    """Endless iterator of SFT batches mixing text-to-image and editing sources.

    Yields :class:`~mrgrpo.sft_data.batch.SFTBatch` (targets ``[B, 3, H, W]`` in [0, 1], prompts,
    editing inputs, kind, source).
    """

    def __init__(
        self,
        sources: Sequence[SourceStream],
        t2i_edit_ratio: tuple[float, float] = (3.0, 1.0),
        caption_dropout: float = 0.1,
        seed: int = 0,
        rank: int = 0,
        stats: DataStats | None = None,
    ):
        self.sources = list(sources)
        if not self.sources:
            raise RecipeError("SFTStream needs at least one source")
        self.seed, self.rank, self.caption_dropout = seed, rank, caption_dropout
        self.stats = stats if stats is not None else DataStats()
        self.by_kind: dict[str, list[SourceStream]] = {
            k: [s for s in self.sources if s.kind == k and s.weight > 0] for k in ("t2i", "edit")
        }
        ratio = dict(zip(("t2i", "edit"), (float(t2i_edit_ratio[0]), float(t2i_edit_ratio[1]))))
        self.kind_probs = {k: (ratio[k] if self.by_kind[k] else 0.0) for k in ratio}
        total = sum(self.kind_probs.values())
        if total <= 0:
            have = [k for k in self.by_kind if self.by_kind[k]]
            raise RecipeError(
                f"sft.t2i_edit_ratio={list(t2i_edit_ratio)} gives no weight to the kinds the SFT sources "
                f"provide ({have}). Fix: give that kind a positive ratio, or add sources of the other "
                "kind (with weight > 0)."
            )
        self.kind_probs = {k: v / total for k, v in self.kind_probs.items()}
        self.batches = 0

    def __iter__(self) -> SFTStream:
        return self

    def choose(self, n: int) -> SourceStream:
        """The source of batch ``n`` (same on every rank)."""
        u_kind, u_src = rng(self.seed, TAG_MIX, n).random(2)
        kind = "t2i" if u_kind < self.kind_probs["t2i"] else "edit"
        if not self.by_kind[kind]:
            kind = "t2i" if kind == "edit" else "edit"
        cands = self.by_kind[kind]
        w = np.cumsum([s.weight for s in cands])
        return cands[min(int(np.searchsorted(w, u_src * w[-1], side="right")), len(cands) - 1)]

    def __next__(self) -> SFTBatch:
        n = self.batches
        src = self.choose(n)
        samples = src.next_batch()
        prompts = [s.prompt for s in samples]
        if src.kind == "t2i" and self.caption_dropout > 0:
            drop = rng(self.seed, TAG_DROP, self.rank, n).random(len(samples)) < self.caption_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop)]
            self.stats.add("captions_dropped", int(drop.sum()))
        self.batches = n + 1
        self.stats.add(f"batches_{src.kind}")
        self.stats.add("samples", len(samples))
        return collate(samples, prompts, src.kind, src.name)

    def state_dict(self) -> dict[str, Any]:
        """Batch counter, per-source cursors and bucket contents, statistics (JSON-serialisable)."""
        return {
            "version": 1,
            "batches": self.batches,
            "stats": self.stats.state_dict(),
            "sources": {s.name: s.state_dict() for s in self.sources},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the stream that wrote ``state`` was."""
        names = {s.name for s in self.sources}
        if set(state["sources"]) != names:
            raise RecipeError(
                f"the checkpoint's SFT data stream has sources {sorted(state['sources'])}, the recipe "
                f"has {sorted(names)}. Fix: resume with the same data.sft_sources (names) as the run "
                "that wrote the checkpoint."
            )
        self.batches = int(state["batches"])
        self.stats.load_state_dict(state.get("stats", {}))
        for s in self.sources:
            s.load_state_dict(state["sources"][s.name])


__all__ = ["SFTStream"]
