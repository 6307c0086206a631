"""One FastAPI app that serves any registered reward.

``POST /v1/score`` ``{"images": [base64 PNG/JPEG], "prompts": [...], "metadata": [{...}] (optional)}``
-> ``{"scores": [...], "valid": [...], "details": {...}}``; ``GET /health``.

JSON only (never pickle). Concurrent requests are queued and scored together, up to
``max_batch`` images per reward call (one worker thread owns the reward, so rewards need not be
thread-safe). Limits: body bytes, images per request, pixels per image. Malformed requests get a
4xx with a message and the server keeps serving; an optional bearer token is enforced.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse


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


class BatchingScorer:
    """Scores queued jobs in a worker thread, merging concurrent jobs up to ``max_batch`` images."""

    def __init__(self, reward, max_batch: int):
        self.reward = reward
        self.max_batch = max(1, max_batch)
        self.jobs: "queue.Queue[_Job | None]" = queue.Queue()
        self.calls = 0
        self.worker = threading.Thread(target=self._run, name="reward-scorer", daemon=True)
        self.worker.start()

    def submit(self, images: list[Any], prompts: list[str], metadata: list[dict]) -> Future:
        fut: Future = Future()
        self.jobs.put(_Job(images, prompts, metadata, fut))
        return fut

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            batch = [job]
            size = len(job.images)
            while size < self.max_batch:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)
                    break
                batch.append(nxt)
                size += len(nxt.images)
            self._score(batch)

    def _score(self, batch: list[_Job]) -> None:
        images, prompts, metadata = [], [], []
        for k, job in enumerate(batch):
            images += job.images
            prompts += job.prompts
            # keep the groups of different requests apart
            metadata += [dict(m, group_id=f"{k}:{m['group_id']}") if "group_id" in m else dict(m) for m in job.metadata]
        try:
            self.calls += 1
            out = self.reward(images, prompts, metadata)
        except Exception as exc:
            for job in batch:
                job.future.set_exception(exc)
            return
        start = 0
        for job in batch:
            n = len(job.images)
            job.future.set_result({"scores": out.scores[start:start + n].tolist(), "valid": out.valid[start:start + n].tolist(),
                                   "details": _json_safe(out.details) if len(batch) == 1 else {"batched_with": len(batch) - 1}})
            start += n

    def close(self) -> None:
        self.jobs.put(None)


def _json_safe(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        return json.loads(json.dumps(obj, default=str))


def _decode_image(text: Any, index: int, limits: ServerLimits):
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
            raise HTTPException(400, f"images[{index}] is {im.format}; send PNG or JPEG")
        if im.width * im.height > limits.max_pixels:
            raise HTTPException(413, f"images[{index}] has {im.width}x{im.height} pixels, over the limit of {limits.max_pixels}")
        im.load()
    except (UnidentifiedImageError, OSError):
        raise HTTPException(400, f"images[{index}] is not a PNG or JPEG image") from None
    return im.convert("RGB")


def create_app(reward, *, name: str = "reward", max_batch: int = 64, token: str | None = None,
               limits: ServerLimits | None = None) -> FastAPI:
    """A FastAPI app serving ``reward`` (any :class:`~mrgrpo.rewards.base.Reward`)."""
    limits = limits or ServerLimits()
    scorer = BatchingScorer(reward, max_batch)
    app = FastAPI(title=f"mrgrpo reward server: {name}")
    app.state.scorer = scorer

    def check_token(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "reward": name, "max_batch": scorer.max_batch}

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        check_token(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise HTTPException(413, f"body of {declared} bytes is over the limit of {limits.max_body_bytes}")
        body = await request.body()
        if len(body) > limits.max_body_bytes:
            raise HTTPException(413, f"body of {len(body)} bytes is over the limit of {limits.max_body_bytes}")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPException(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "body must be a JSON object with images, prompts and optional metadata")
        images, prompts = data.get("images"), data.get("prompts")
        metadata = data.get("metadata") or [{} for _ in (images or [])]
        if not isinstance(images, list) or not isinstance(prompts, list):
            raise HTTPException(400, "`images` and `prompts` must be lists")
        if len(images) != len(prompts) or len(metadata) != len(images):
            raise HTTPException(400, f"length mismatch: {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
        if not images:
            raise HTTPException(400, "no images")
        if len(images) > limits.max_images:
            raise HTTPException(413, f"{len(images)} images is over the limit of {limits.max_images} per request")
        if not all(isinstance(p, str) for p in prompts) or not all(isinstance(m, dict) for m in metadata):
            raise HTTPException(400, "`prompts` must be strings and `metadata` objects")
        decoded = [_decode_image(t, i, limits) for i, t in enumerate(images)]
        fut = scorer.submit(decoded, prompts, metadata)
        import asyncio

        try:
            result = await asyncio.wrap_future(fut)
        except Exception as exc:
            raise HTTPException(500, f"reward failed: {type(exc).__name__}: {exc}") from None
        return JSONResponse(result)

    @app.on_event("shutdown")
    def _close() -> None:
        scorer.close()

    return app
