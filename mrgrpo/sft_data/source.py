"""One protocol for every kind of SFT source, and the size-bucketing stream built on it.

A :class:`SampleSource` reads decoded samples in a seeded, rank-sharded order from a cursor
(records files and WebDataset shards implement it); :class:`SourceStream` turns any of them
into an endless stream of same-size batches with a resumable state, without knowing which kind
of source it reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from mrgrpo.sft_data.samples import DataStats, Kind, Sample, Skipped

Cursor = tuple[int, ...]


@runtime_checkable
class SampleSource(Protocol):
    """A source of decoded samples read in a seeded order, sharded by rank, resumable from a cursor.

    Attributes:
        name: the source's name (statistics, logs, checkpoints).
        kind: ``"t2i"`` or ``"edit"``.
        weight: its weight among the sources of its kind.
        files: what it reads (named in error messages).
        max_failures: after this many skipped samples in a row the source is taken to have no
            readable sample left (an error); ``None`` when :meth:`read` detects that itself.
    """

    name: str
    kind: Kind
    weight: float
    files: list[str]
    max_failures: int | None

    def start(self) -> Cursor:
        """The cursor of a fresh stream (the first sample of epoch 0)."""
        ...

    def read(self, cursor: Cursor, num_workers: int) -> Iterator[tuple[Cursor, Sample | Skipped]]:
        """Endless ``(cursor after the item, item)`` pairs from ``cursor``, epoch after epoch.

        ``num_workers`` > 0 decodes in DataLoader processes; the items and their order are the same.
        Every :class:`Sample` carries in ``key`` a locator that :meth:`load` accepts.
        """
        ...

    def load(self, key: Any) -> Sample | Skipped:
        """Re-read the sample at the locator ``key`` (as stored in a state dict: lists for tuples)."""
        ...

    def probe(self) -> None:
        """Raise :class:`~mrgrpo.config.RecipeError` naming the files unless one sample is readable."""
        ...


def identity(x: Any) -> Any:
    """DataLoader ``collate_fn`` that keeps the items as they are (module level: picklable)."""
    return x


class SourceStream:
    """One source as an endless stream of same-size batches (size buckets).

    Samples are read in the source's order; each decoded sample joins the bucket of its
    ``(H, W)``; the first bucket to hold ``batch_size`` samples is emitted. Skipped samples are
    counted in ``stats``. ``state_dict()`` = cursor + bucket contents as locators.
    """

    def __init__(self, source: SampleSource, batch_size: int, stats: DataStats, num_workers: int = 0):
        self.source, self.batch_size, self.stats, self.num_workers = source, batch_size, stats, num_workers
        self.cursor: Cursor = source.start()
        self.buckets: dict[tuple[int, int], list[Sample]] = {}
        self._it: Iterator[tuple[Cursor, Sample | Skipped]] | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def kind(self) -> Kind:
        return self.source.kind

    @property
    def weight(self) -> float:
        return self.source.weight

    # -- iteration ----------------------------------------------------------------------
    def next_item(self) -> Sample | Skipped:
        """The next sample (or skipped one) of the source; advances the cursor."""
        if self._it is None:
            self._it = self.source.read(tuple(self.cursor), self.num_workers)
        cursor, item = next(self._it)
        self.cursor = tuple(cursor)
        return item

    def next_batch(self) -> list[Sample]:
        """The next ``batch_size`` samples of one size (in the order they were read)."""
        fails = 0
        limit = self.source.max_failures
        while True:
            item = self.next_item()
            if isinstance(item, Skipped):
                self.stats.skip(self.name, item.reason, item.detail)
                fails += 1
                if limit is not None and fails > limit:
                    raise RuntimeError(
                        f"SFT source {self.name!r}: no readable sample in a whole pass over "
                        f"{self.source.files}; last: {item.detail}"
                    )
                continue
            fails = 0
            bucket = self.buckets.setdefault(item.size, [])
            bucket.append(item)
            if len(bucket) >= self.batch_size:
                del self.buckets[item.size]
                return bucket

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The cursor and the bucket contents as locators (JSON-serialisable)."""
        return {
            "cursor": list(self.cursor),
            "buckets": [[h, w, [s.key for s in items]] for (h, w), items in self.buckets.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; bucketed samples are re-read from their locators."""
        self._it = None  # a fresh reader from the restored cursor
        self.cursor = tuple(state["cursor"])
        self.buckets = {}
        for h, w, keys in state["buckets"]:
            items = []
            for key in keys:
                item = self.source.load(key)
                if isinstance(item, Skipped):  # gone since the checkpoint: counted, not fatal
                    self.stats.skip(self.name, item.reason, item.detail)
                else:
                    items.append(item)
            if items:
                self.buckets[(int(h), int(w))] = items


__all__ = ["Cursor", "SampleSource", "SourceStream", "identity"]
