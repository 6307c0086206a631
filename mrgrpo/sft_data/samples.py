"""What every SFT source yields: decoded samples, skipped ones with a reason, and their counts."""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

log = logging.getLogger(__name__)

#: why a sample was skipped (the ``skipped_<reason>`` counters)
REASONS: tuple[str, ...] = ("missing", "corrupt", "bad_record", "no_caption", "bad_shard")
#: the two kinds of SFT batch
Kind = Literal["t2i", "edit"]


@dataclass
class Sample:
    """One decoded sample: the resized target, the text, the resized editing inputs."""

    image: Image.Image
    prompt: str
    refs: list[Image.Image] = field(default_factory=list)
    key: Any = None  # where it came from: a record index, or (shard url, index in shard)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the target in pixels (the bucket key)."""
        return self.image.height, self.image.width


@dataclass
class Skipped:
    """A sample that could not be used, with the reason (one of :data:`REASONS`)."""

    reason: str
    detail: str = ""
    key: Any = None


class DataStats:
    """Counts of used and skipped samples, per reason and per source (logged by the trainers).

    Reasons: ``missing`` (file not found), ``corrupt`` (cannot be decoded), ``bad_record`` (a
    record without the format's fields), ``no_caption`` (no text), ``bad_shard`` (a tar shard that
    cannot be opened or read). ``as_dict()`` gives flat numeric entries: ``samples``,
    ``batches_t2i``, ``batches_edit``, ``skipped``, ``skipped_<reason>`` and
    ``<source>/skipped_<reason>``.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=20)  # the last skip messages, for debugging

    def skip(self, source: str, reason: str, detail: str = "") -> None:
        """Count one skipped sample (and warn for the first few of each reason and source)."""
        self.counts["skipped"] += 1
        self.counts[f"skipped_{reason}"] += 1
        self.counts[f"{source}/skipped_{reason}"] += 1
        msg = f"{source}: skipped ({reason}) {detail}".rstrip()
        self.recent.append(msg)
        n = self.counts[f"{source}/skipped_{reason}"]
        if n <= 3:
            log.warning("%s%s", msg, "" if n < 3 else " (further ones are only counted)")

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key``."""
        self.counts[key] += n

    def as_dict(self) -> dict[str, int]:
        """Flat ``{name: count}`` (numbers only)."""
        out = {"samples": 0, "batches_t2i": 0, "batches_edit": 0, "skipped": 0}
        out.update(self.counts)
        return dict(out)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = Counter(state.get("counts", {}))

    def __repr__(self) -> str:
        return f"DataStats({dict(self.counts)})"


__all__ = ["REASONS", "DataStats", "Kind", "Sample", "Skipped"]
