"""One FastAPI app that serves any registered reward.

``POST /v1/score`` with JSON ``{"images": [base64 PNG or JPEG], "prompts": [...], "metadata": [{...}]
(optional)}`` -> ``{"scores": [...], "valid": [...], "details": {...}}``; ``GET /health``.

* JSON only (never pickle): images are base64 PNG/JPEG (a ``data:`` URL prefix is accepted).
* Batching: requests wait in one queue; a worker thread merges queued requests into reward calls
  of at most ``max_batch`` images (a request bigger than that is scored in chunks; a reward that
  compares the images of a group gets whole groups, and groups of different requests are kept
  apart). The worker owns the reward, so the reward itself need not be thread-safe.
* Limits: body bytes (enforced while reading, chunked uploads included), images per request,
  pixels per image (checked from the header before decoding). Malformed requests get a 4xx with
  a message (400 malformed, 401 token, 413 too large, 415 not an image format we take) and the
  server keeps serving. A reward that raises gives a 500 with the error; the server keeps serving.
* Security: bind loopback by default (see ``mrgrpo serve --host``); optional bearer token,
  compared in constant time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from mrgrpo.rewards.base import group_chunks


@dataclass
class ServerLimits:
    """Request limits: body size (bytes), images per request, pixels per image."""

    max_body_bytes: int = 64 * 2**20
    max_images: int = 256
    max_pixels: int = 4096 * 4096


@dataclass
class _Job:
    images: list[Any]
    prompts: list[str]
    metadata: list[dict]
    future: Future
    tag: int = 0
    parts: list[tuple[int, int]] = field(default_factory=list)  # (start, stop) chunks of this job still to score
    results: dict[int, Any] = field(default_factory=dict)  # start -> (scores, valid, details)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _group_chunks(metadata: list[dict], max_batch: int, needs_groups: bool) -> list[tuple[int, int]]:
    """Contiguous (start, stop) chunks of at most ``max_batch`` items; whole groups when ``needs_groups``
    (a group bigger than ``max_batch`` is one chunk). A group is a run of consecutive items with the
    same ``group_id`` (groups must be contiguous in the request)."""
    n = len(metadata)
    runs = None
    if needs_groups:  # number the runs, so a group id that comes back later is a new group
        runs = [0] * n
        for i in range(1, n):
            runs[i] = runs[i - 1] + (metadata[i].get("group_id") != metadata[i - 1].get("group_id"))
    return [(c[0], c[-1] + 1) for c in group_chunks(runs, max_batch, n)]


class BatchingScorer:
    """Scores queued jobs in one worker thread, merging concurrent jobs up to ``max_batch`` images per reward call."""

    def __init__(self, reward, max_batch: int):
        self.reward = reward
        self.max_batch = max(1, int(max_batch))
        self.needs_groups = bool(getattr(reward, "needs_groups", False))
        self.pending: deque[tuple[_Job, int, int]] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.calls = 0
        self.largest_call = 0
        self.images_scored = 0
        self._tags = 0
        self.worker = threading.Thread(target=self._run, name="reward-scorer", daemon=True)
        self.worker.start()

    def submit(self, images: list[Any], prompts: list[str], metadata: list[dict]) -> Future:
        fut: Future = Future()
        with self.cond:
            self._tags += 1
            job = _Job(images, prompts, metadata, fut, tag=self._tags)
            job.parts = _group_chunks(metadata, self.max_batch, self.needs_groups)
            for start, stop in job.parts:
                self.pending.append((job, start, stop))
            self.cond.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                batch = [self.pending.popleft()]
                size = batch[0][2] - batch[0][1]
                while self.pending and size + (self.pending[0][2] - self.pending[0][1]) <= self.max_batch:
                    item = self.pending.popleft()
                    batch.append(item)
                    size += item[2] - item[1]
            self._score(batch, size)

    def _score(self, batch: list[tuple[_Job, int, int]], size: int) -> None:
        images, prompts, metadata = [], [], []
        for job, a, b in batch:
            images += job.images[a:b]
            prompts += job.prompts[a:b]
            # keep the groups of different requests apart
            metadata += [dict(m, group_id=f"{job.tag}:{m['group_id']}") if "group_id" in m else dict(m) for m in job.metadata[a:b]]
        self.calls += 1
        self.largest_call = max(self.largest_call, size)
        try:
            out = self.reward(images, prompts, metadata)
            self.images_scored += size
        except Exception as exc:
            for job, _, _ in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        offset = 0
        for job, a, b in batch:
            n = b - a
            part = (out.scores[offset:offset + n].tolist(), out.valid[offset:offset + n].tolist(),
                    _slice_details(out.details, offset, offset + n, size))
            offset += n
            with job.lock:
                job.results[a] = part
                done = len(job.results) == len(job.parts)
            if done and not job.future.done():
                job.future.set_result(_assemble(job, merged=len(batch) > 1))

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls, "largest_call": self.largest_call, "images_scored": self.images_scored,
                "queued_chunks": len(self.pending)}

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _slice_details(details: Any, a: int, b: int, total: int) -> dict:
    """Per-image lists (length == batch size) sliced to this request; other JSON-able values kept."""
    if not isinstance(details, dict):
        return {}
    out = {}
    for k, v in details.items():
        if isinstance(v, (list, tuple)) and len(v) == total:
            out[k] = _json_safe(list(v[a:b]))
        elif isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        else:
            out[k] = _json_safe(v)
    return out


def _assemble(job: _Job, merged: bool) -> dict:
    scores, valid, details = [], [], {}
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


def _json_safe(obj: Any) -> Any:
    try:
        json.dumps(obj, allow_nan=False)
        return obj
    except (TypeError, ValueError):
        return json.loads(json.dumps(obj, default=str))


def decode_image(text: Any, index: int, limits: ServerLimits):
    """A PIL RGB image from base64 PNG/JPEG, or an HTTPException with a message."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(text, str):
        raise HTTPException(400, f"images[{index}] must be a base64 string")
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"images[{index}] is not valid base64") from None
    try:
        im = Image.open(io.BytesIO(raw))
        if im.format not in ("PNG", "JPEG"):
            raise HTTPException(415, f"images[{index}] is {im.format}; send PNG or JPEG")
        if im.width * im.height > limits.max_pixels:
            raise HTTPException(413, f"images[{index}] has {im.width}x{im.height} pixels, over the limit of {limits.max_pixels}")
        im.load()
        return im.convert("RGB")
    except HTTPException:
        raise
    except Image.DecompressionBombError:
        raise HTTPException(413, f"images[{index}] is too large to decode") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise HTTPException(400, f"images[{index}] is not a PNG or JPEG image (or it is truncated)") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes is over the limit of {limit}")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise HTTPException(413, f"body of more than {limit} bytes is over the limit of {limit}")
    return bytes(buf)


def parse_request(data: Any, limits: ServerLimits) -> tuple[list[Any], list[str], list[dict]]:
    """Validate a decoded JSON body; (images still base64, prompts, metadata) or an HTTPException."""
    if not isinstance(data, dict):
        raise HTTPException(400, "body must be a JSON object with `images`, `prompts` and optional `metadata`")
    unknown = set(data) - {"images", "prompts", "metadata"}
    if unknown:
        raise HTTPException(400, f"unknown field(s) {sorted(unknown)}; expected images, prompts, metadata")
    images, prompts = data.get("images"), data.get("prompts")
    if not isinstance(images, list) or not isinstance(prompts, list):
        raise HTTPException(400, "`images` and `prompts` must be lists")
    metadata = data.get("metadata")
    if metadata is None:
        metadata = [{} for _ in images]
    if not isinstance(metadata, list):
        raise HTTPException(400, "`metadata` must be a list of objects, one per image")
    if len(images) != len(prompts) or len(metadata) != len(images):
        raise HTTPException(400, f"length mismatch: {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
    if not images:
        raise HTTPException(400, "no images")
    if len(images) > limits.max_images:
        raise HTTPException(413, f"{len(images)} images is over the limit of {limits.max_images} per request")
    if not all(isinstance(p, str) for p in prompts):
        raise HTTPException(400, "`prompts` must be strings")
    if not all(isinstance(m, dict) for m in metadata):
        raise HTTPException(400, "`metadata` entries must be JSON objects")
    return images, prompts, metadata


def create_app(reward, *, name: str = "reward", max_batch: int = 64, token: str | None = None,
               limits: ServerLimits | None = None) -> FastAPI:
    """A FastAPI app serving ``reward`` (any :class:`~mrgrpo.rewards.base.Reward`)."""
    limits = limits or ServerLimits()
    scorer = BatchingScorer(reward, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        scorer.close()
        close = getattr(reward, "close", None)
        if callable(close):
            close()

    app = FastAPI(title=f"mrgrpo reward server: {name}", lifespan=lifespan)
    app.state.scorer = scorer
    expected = f"Bearer {token}".encode() if token else None

    def check_token(request: Request) -> None:
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "reward": name, "max_batch": scorer.max_batch, "needs_groups": scorer.needs_groups,
                "is_remote": bool(getattr(reward, "is_remote", False)), **scorer.stats()}

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        check_token(request)
        body = await _read_body(request, limits.max_body_bytes)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPException(400, "body is not valid JSON") from None
        images, prompts, metadata = parse_request(data, limits)
        decoded = [decode_image(t, i, limits) for i, t in enumerate(images)]
        if scorer.needs_groups:  # the scorer splits requests at group boundaries: put each group's images together
            order = sorted(range(len(decoded)), key=lambda i: (str(metadata[i].get("group_id", "")), i))
        else:
            order = list(range(len(decoded)))
        fut = scorer.submit([decoded[i] for i in order], [prompts[i] for i in order], [metadata[i] for i in order])
        try:
            result = await asyncio.wrap_future(fut)
        except Exception as exc:
            raise HTTPException(500, f"reward failed: {type(exc).__name__}: {exc}") from None
        if order != list(range(len(order))):
            inverse = [0] * len(order)
            for pos, i in enumerate(order):
                inverse[i] = pos
            reorder = lambda seq: [seq[p] for p in inverse]  # noqa: E731
            details = {k: reorder(v) if isinstance(v, list) and len(v) == len(order) else v for k, v in result["details"].items()}
            result = {"scores": reorder(result["scores"]), "valid": reorder(result["valid"]), "details": details}
        return JSONResponse(result)

    return app
