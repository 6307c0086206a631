"""The scoring worker of the reward server: one thread that owns the reward and merges queued requests.

Concurrent requests are merged into reward calls of at most ``max_batch`` images (a bigger request
is scored in chunks; a reward that compares the images of a group gets whole groups, and the
groups of different requests are kept apart). When a merged call raises, each request of it is
scored again on its own, so only the request whose input makes the reward fail gets the error.
Scheduling is fair to small requests: a request is also cut into chunks of at most ``merge_pixels``
pixels (at least one image), and the chunk with the fewest pixels goes first; a chunk that has waited
``starvation_s`` goes next, but at most every other call. A client sending the biggest allowed
requests thus delays a small request by about two of its chunks' scoring at most. The worker holds
no reference to a batch once it is answered.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mrgrpo.serve")


@dataclass
class _Job:
    images: list[Any]
    prompts: list[str]
    metadata: list[dict]
    future: Future
    tag: int = 0
    parts: list[tuple[int, int]] = field(default_factory=list)  # (start, stop) chunks of this job
    results: dict[int, Any] = field(default_factory=dict)  # start -> (scores, valid, details)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Chunk:
    job: _Job
    start: int
    stop: int
    pixels: int
    queued: float


def group_chunks(
    metadata: list[dict],
    max_batch: int,
    needs_groups: bool,
    pixels: list[int] | None = None,
    max_pixels: int | None = None,
) -> list[tuple[int, int]]:
    """Contiguous (start, stop) chunks of at most ``max_batch`` items and, when ``pixels`` (per item) and
    ``max_pixels`` are given, at most ``max_pixels`` pixels (at least one item); whole groups when
    ``needs_groups`` (a group bigger than ``max_batch`` is one chunk). Groups must be contiguous in the request."""
    n = len(metadata)
    if not needs_groups:
        if not pixels or not max_pixels:
            return [(i, min(n, i + max_batch)) for i in range(0, n, max_batch)]
        chunks, start, total = [], 0, 0
        for i, px in enumerate(pixels):
            if i > start and (i - start >= max_batch or total + px > max_pixels):
                chunks.append((start, i))
                start, total = i, 0
            total += px
        return chunks + [(start, n)]
    bounds = [0] + [i for i in range(1, n) if metadata[i].get("group_id") != metadata[i - 1].get("group_id")] + [n]
    chunks, start = [], 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - start > max_batch and a > start:
            chunks.append((start, a))
            start = a
    chunks.append((start, n))
    return chunks


class BatchingScorer:
    """Scores queued jobs in one worker thread, merging concurrent jobs up to ``max_batch`` images per reward call."""

    def __init__(self, reward: Any, max_batch: int, starvation_s: float = 10.0, merge_pixels: int = 2**22):
        self.reward = reward
        self.max_batch = max(1, int(max_batch))
        self.needs_groups = bool(getattr(reward, "needs_groups", False))
        self.starvation_s = float(starvation_s)
        self.merge_pixels = int(merge_pixels)
        self.pending: list[_Chunk] = []  # in arrival order
        self.cond = threading.Condition()
        self.closed = False
        self.calls = 0
        self.largest_call = 0
        self.images_scored = 0
        self.rescored = 0
        self._tags = 0
        self._aged_last = False
        self.worker = threading.Thread(target=self._run, name="reward-scorer", daemon=True)
        self.worker.start()

    def submit(self, images: list[Any], prompts: list[str], metadata: list[dict]) -> Future:
        """Queue one request; the future gets ``{"scores", "valid", "details"}`` or the reward's exception."""
        fut: Future = Future()
        sizes = [getattr(im, "size", (0, 0)) for im in images]
        with self.cond:
            self._tags += 1
            job = _Job(images, prompts, metadata, fut, tag=self._tags)
            px = [int(w) * int(h) for w, h in sizes]
            job.parts = group_chunks(metadata, self.max_batch, self.needs_groups, px, self.merge_pixels)
            now = time.monotonic()
            for start, stop in job.parts:
                pixels = sum(px[start:stop])
                self.pending.append(_Chunk(job, start, stop, pixels, now))
            self.cond.notify()
        return fut

    def _take(self) -> list[tuple[_Job, int, int]] | None:
        """The next reward call: the chunk with the fewest pixels first (the oldest one, every other call,
        once it has waited ``starvation_s``), merged with other queued chunks up to ``max_batch`` images
        and, unless the first chunk is bigger, ``merge_pixels`` pixels."""
        with self.cond:
            while True:
                self.pending = [c for c in self.pending if not c.job.future.done()]  # client gone, or a chunk failed
                if self.pending or self.closed:
                    break
                self.cond.wait()
            if self.closed:
                return None
            if time.monotonic() - self.pending[0].queued > self.starvation_s and not self._aged_last:
                order = list(self.pending)  # the oldest chunk goes now, then the smallest first again
                self._aged_last = True
            else:
                self._aged_last = False
                order = sorted(self.pending, key=lambda c: c.pixels)  # stable: ties stay in arrival order
            first = order[0]
            batch, size, pixels = [first], first.stop - first.start, first.pixels
            pixel_cap = max(first.pixels, self.merge_pixels)
            for c in order[1:]:
                n = c.stop - c.start
                if size + n <= self.max_batch and pixels + c.pixels <= pixel_cap:
                    batch.append(c)
                    size += n
                    pixels += c.pixels
            taken = {id(c) for c in batch}
            self.pending = [c for c in self.pending if id(c) not in taken]
            return [(c.job, c.start, c.stop) for c in batch]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._score(batch)
            except BaseException as exc:  # never let the worker die: fail the batch instead
                log.error("scoring worker error: %s: %s", type(exc).__name__, exc)
                for job, _, _ in batch:
                    _fail(job, exc)
            del batch  # the worker keeps nothing alive while it waits for the next request

    def _call(self, batch: list[tuple[_Job, int, int]]) -> Any:
        images, prompts, metadata = [], [], []
        for job, a, b in batch:
            images += job.images[a:b]
            prompts += job.prompts[a:b]
            # keep the groups of different requests apart
            metadata += [
                dict(m, group_id=f"{job.tag}:{m['group_id']}") if "group_id" in m else dict(m)
                for m in job.metadata[a:b]
            ]
        size = len(images)
        self.calls += 1
        self.largest_call = max(self.largest_call, size)
        out = self.reward(images, prompts, metadata)
        self.images_scored += size
        return out

    def _score(self, batch: list[tuple[_Job, int, int]]) -> None:
        try:
            out = self._call(batch)
        except Exception as exc:
            if len({id(job) for job, _, _ in batch}) == 1:
                for job, _, _ in batch:
                    _fail(job, exc)
                return
            # a merged call failed: score each request on its own so only the guilty one fails
            log.warning(
                "a merged reward call of %d requests failed (%s: %s); scoring them one by one",
                len(batch),
                type(exc).__name__,
                _short(exc),
            )
            del exc
            self.rescored += 1
            for item in batch:
                if item[0].future.done():
                    continue
                try:
                    self._deliver([item], self._call([item]))
                except Exception as item_exc:  # noqa: BLE001 - reported to that request only
                    _fail(item[0], item_exc)
            return
        self._deliver(batch, out)

    def _deliver(self, batch: list[tuple[_Job, int, int]], out: Any) -> None:
        size = sum(b - a for _, a, b in batch)
        scores, valid = out.scores.tolist(), out.valid.tolist()
        offset = 0
        for job, a, b in batch:
            n = b - a
            part = (
                scores[offset : offset + n],
                valid[offset : offset + n],
                slice_details(out.details, offset, offset + n, size),
            )
            offset += n
            with job.lock:
                job.results[a] = part
                done = len(job.results) == len(job.parts)
            if done and not job.future.done():
                result = _assemble(job, merged=len(batch) > 1)
                job.images = []  # dropped before the answer can leave: the client never sees its batch still held
                job.future.set_result(result)

    def stats(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "largest_call": self.largest_call,
            "images_scored": self.images_scored,
            "queued_chunks": len(self.pending),
            "rescored_batches": self.rescored,
        }

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.pending.clear()
            self.cond.notify_all()


def _short(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]


def _fail(job: _Job, exc: BaseException) -> None:
    job.images = []  # before the error can reach the client (as in _deliver)
    if not job.future.done():
        job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))


def slice_details(details: Any, a: int, b: int, total: int) -> dict:
    """Per-image lists (length == batch size) sliced to this request; other values made JSON-safe."""
    if not isinstance(details, dict):
        return {}
    out = {}
    for k, v in details.items():
        if isinstance(v, (list, tuple)) and len(v) == total:
            out[str(k)] = json_safe(list(v[a:b]))
        else:
            out[str(k)] = json_safe(v)
    return out


def json_safe(obj: Any, depth: int = 0) -> Any:
    """``obj`` as plain JSON: non-finite floats -> None, unknown objects -> ``str``, nesting cut at 32 levels."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if depth >= 32:
        return "..."
    if isinstance(obj, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, depth + 1) for v in obj]
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        try:
            return json_safe(item(), depth + 1)
        except Exception:  # noqa: BLE001
            pass
    try:
        return str(obj)[:1000]
    except Exception:  # noqa: BLE001
        return "?"


def _assemble(job: _Job, merged: bool) -> dict:
    scores, valid = [], []
    details: dict[str, Any] = {}
    for start, _stop in job.parts:
        s, v, d = job.results[start]
        scores += s
        valid += v
        for k, val in d.items():
            if isinstance(val, list) and k in details and isinstance(details[k], list):
                details[k] = details[k] + val
            else:
                details[k] = val
    if merged or len(job.parts) > 1:
        details["batched"] = True  # counters in details then describe a whole reward call
    return {"scores": scores, "valid": valid, "details": details}


def dumps(obj: Any) -> bytes:
    """Strict JSON bytes (ASCII, so a lone surrogate in a prompt cannot break the encoding)."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()
