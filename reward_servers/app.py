"""One FastAPI app that serves any registered reward.

``POST /v1/score`` with JSON ``{"images": [base64 PNG or JPEG], "prompts": [...], "metadata": [{...}]
(optional)}`` -> ``{"scores": [...], "valid": [...], "details": {...}}``; ``GET /health``.

* JSON only (never pickle): images are base64 PNG/JPEG (a ``data:`` URL prefix is accepted).
* Nothing slow runs on the event loop: JSON parsing and image decoding run in a small thread
  pool, scoring in the worker thread of :class:`~mrgrpo.reward_servers.batching.BatchingScorer`,
  so ``/health`` and other clients are answered while a big request is decoded.
* Limits (:class:`ServerLimits`): body bytes (enforced while reading), JSON values per body,
  images per request, pixels per image and per request (both checked from the image headers
  before anything is decoded), and decoded pixels held at once by all requests together (a
  request waits for room). Every malformed request gets a 4xx with a one-line message (400
  malformed, 401 token, 413 too large, 415 a format or mode we do not take) and the server keeps
  serving. A reward that raises gives a 500 with the error for that request only.
* Security: the CLI binds loopback by default and refuses other addresses without a token; the
  bearer token is compared in constant time; with a token the docs pages (/docs, /redoc,
  /openapi.json) are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from mrgrpo.reward_servers.batching import BatchingScorer, dumps, json_safe
from mrgrpo.reward_servers.images import ImageError, OpenedImage, decode_opened, open_images
from mrgrpo.reward_servers.protocol import TIMED_OUT

log = logging.getLogger("mrgrpo.serve")

#: requests with more pixels than this are "big": decoded in their own thread pool, kept out of the reserve
BIG_REQUEST_PIXELS = 2**22
#: decoded pixels kept for small requests on top of ``max_inflight_pixels`` (64 MiB)
SMALL_RESERVE_PIXELS = 2**24


@dataclass
class ServerLimits:
    """Request limits.

    Attributes:
        max_body_bytes: body size (bytes).
        max_images: images per request.
        max_pixels: pixels (width x height) per image.
        max_request_pixels: pixels of all the images of one request (default 2**26 = 64 Mi:
            256 images of 512x512, 64 of 1024x1024 or 4 of 4096x4096; 256 MiB decoded).
        max_inflight_pixels: decoded pixels held by all requests at once (default twice
            ``max_request_pixels``): a request waits until its images fit. Small requests (at most
            4 Mi pixels) may use 16 Mi pixels more, so big ones never hold them up.
        max_json_values: commas, ``[`` and ``{`` in a body (bounds what parsing can allocate).
    """

    max_body_bytes: int = 64 * 2**20
    max_images: int = 256
    max_pixels: int = 4096 * 4096
    max_request_pixels: int = 2**26
    max_inflight_pixels: int | None = None
    max_json_values: int = 1_000_000

    def inflight(self) -> int:
        return max(self.max_inflight_pixels or 2 * self.max_request_pixels, self.max_request_pixels)


class PixelBudget:
    """Reservation of decoded pixels (event-loop side only).

    Requests of more than ``small`` pixels share ``total``; small ones may also use ``reserve`` more, so
    big requests filling the budget never hold small ones up. Waiters are granted first-fit in arrival
    order: a small request that fits is not held up behind a big one waiting for room (the big one
    gets in as soon as enough is released)."""

    def __init__(self, total: int, reserve: int = 0, small: int = 0):
        self.total, self.reserve, self.small = int(total), int(reserve), int(small)
        self.used = 0
        self.waiters: deque[tuple[int, asyncio.Future]] = deque()

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.total + (self.reserve if n <= self.small else 0)

    async def acquire(self, n: int) -> None:
        if self._fits(n):
            self.used += n
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self.waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(entry)
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        for entry in list(self.waiters):
            n, fut = entry
            if fut.done():
                self.waiters.remove(entry)
            elif self._fits(n):
                self.waiters.remove(entry)
                self.used += n
                fut.set_result(None)


class _Disconnected(Exception):
    def __init__(self, received: int):
        self.received = received


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes is over the limit of {limit}")
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise HTTPException(413, f"body of more than {limit} bytes is over the limit of {limit}")
    except ClientDisconnect:
        raise _Disconnected(len(buf)) from None
    return bytes(buf)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes, limits: ServerLimits) -> Any:
    """The JSON value of a body, or an HTTPException (413 too many values, 400 anything the parser refuses)."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > limits.max_json_values:
        raise HTTPException(413, f"body has about {values} JSON values, over the limit of {limits.max_json_values}")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise HTTPException(400, "body is not valid JSON: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - JSONDecodeError, UnicodeDecodeError, huge ints, NaN, ...
        reason = str(exc).split("\n")[0][:120]
        raise HTTPException(400, f"body is not valid JSON: {reason}") from None


def parse_request(data: Any, limits: ServerLimits) -> tuple[list[Any], list[str], list[dict]]:
    """Validate a decoded JSON body; (images still base64, prompts, metadata) or an HTTPException."""
    if not isinstance(data, dict):
        raise HTTPException(400, "body must be a JSON object with `images`, `prompts` and optional `metadata`")
    unknown = set(data) - {"images", "prompts", "metadata"}
    if unknown:
        raise HTTPException(400, f"unknown field(s) {sorted(unknown)[:5]}; expected images, prompts, metadata")
    images, prompts = data.get("images"), data.get("prompts")
    if not isinstance(images, list) or not isinstance(prompts, list):
        raise HTTPException(400, "`images` and `prompts` must be lists")
    metadata = data.get("metadata")
    if metadata is None:
        metadata = [{} for _ in images]
    if not isinstance(metadata, list):
        raise HTTPException(400, "`metadata` must be a list of objects, one per image")
    if len(images) != len(prompts) or len(metadata) != len(images):
        raise HTTPException(
            400, f"length mismatch: {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata"
        )
    if not images:
        raise HTTPException(400, "no images")
    if len(images) > limits.max_images:
        raise HTTPException(413, f"{len(images)} images is over the limit of {limits.max_images} per request")
    if not all(isinstance(p, str) for p in prompts):
        raise HTTPException(400, "`prompts` must be strings")
    for i, m in enumerate(metadata):
        if not isinstance(m, dict):
            raise HTTPException(400, f"metadata[{i}] must be a JSON object")
        gid = m.get("group_id")
        if not (gid is None or isinstance(gid, (str, int, float, bool))):
            raise HTTPException(400, f"metadata[{i}].group_id must be a string or a number")
    return images, prompts, metadata


def _prepare(body: bytes, limits: ServerLimits) -> tuple[list[OpenedImage], list[str], list[dict]]:
    """Parse and validate a body and read its image headers (runs in the decode pool)."""
    images, prompts, metadata = parse_request(parse_body(body, limits), limits)
    try:
        opened = open_images(images, limits.max_pixels, limits.max_request_pixels)
    except ImageError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return opened, prompts, metadata


def _decode(opened: list[OpenedImage]) -> list[Any]:
    try:
        return decode_opened(opened)
    except ImageError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _peer(request: Request) -> str:
    return "%s:%s" % tuple(request.client) if request.client else "a client"


def _in_order(result: dict, order: list[int]) -> dict:
    """Undo the group-wise reordering of a request's images."""
    inverse = [0] * len(order)
    for pos, i in enumerate(order):
        inverse[i] = pos

    def reorder(seq: list) -> list:
        return [seq[p] for p in inverse]

    details = {
        k: reorder(v) if isinstance(v, list) and len(v) == len(order) else v for k, v in result["details"].items()
    }
    return {"scores": reorder(result["scores"]), "valid": reorder(result["valid"]), "details": details}


def create_app(
    reward: Any,
    *,
    name: str = "reward",
    max_batch: int = 64,
    token: str | None = None,
    limits: ServerLimits | None = None,
    decode_threads: int = 2,
) -> FastAPI:
    """A FastAPI app serving ``reward`` (any :class:`~mrgrpo.rewards.base.Reward`)."""
    limits = limits or ServerLimits()
    scorer = BatchingScorer(reward, max_batch)
    # parsing and small requests never wait behind the decoding of big ones
    pool = ThreadPoolExecutor(max_workers=max(1, decode_threads), thread_name_prefix="reward-decode")
    big_pool = ThreadPoolExecutor(max_workers=max(1, decode_threads), thread_name_prefix="reward-decode-big")
    budget = PixelBudget(limits.inflight(), reserve=SMALL_RESERVE_PIXELS, small=BIG_REQUEST_PIXELS)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        scorer.close()
        pool.shutdown(wait=False, cancel_futures=True)
        big_pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(reward, "close", None)
        if callable(close):
            close()

    docs: dict[str, Any] = {} if token is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title=f"mrgrpo reward server: {name}", lifespan=lifespan, **docs)
    app.state.scorer = scorer
    app.state.budget = budget
    expected = f"Bearer {token}".encode() if token else None

    def check_token(request: Request) -> None:
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(got, expected):
            raise HTTPException(
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "reward": name,
            "max_batch": scorer.max_batch,
            "needs_groups": scorer.needs_groups,
            "is_remote": bool(getattr(reward, "is_remote", False)),
            "max_images": limits.max_images,
            "max_pixels": limits.max_pixels,
            "max_request_pixels": limits.max_request_pixels,
            "inflight_pixels": budget.used,
            "waiting_requests": len(budget.waiters),
            **scorer.stats(),
        }

    async def handle(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        check_token(request)
        body = await _read_body(request, limits.max_body_bytes)
        opened, prompts, metadata = await loop.run_in_executor(pool, _prepare, body, limits)
        del body
        pixels = sum(im.pixels for im in opened)
        await budget.acquire(pixels)
        try:
            decoded = await loop.run_in_executor(big_pool if pixels > BIG_REQUEST_PIXELS else pool, _decode, opened)
            del opened
            if scorer.needs_groups:  # the scorer splits requests at group boundaries: put each group's images together
                order = sorted(range(len(decoded)), key=lambda i: (str(metadata[i].get("group_id", "")), i))
            else:
                order = list(range(len(decoded)))
            fut = scorer.submit([decoded[i] for i in order], [prompts[i] for i in order], [metadata[i] for i in order])
            del decoded
            try:
                result = await asyncio.wrap_future(fut)
            except Exception as exc:  # noqa: BLE001 - the reward raised on this request's input
                message = str(exc).replace("\n", " ")[:500]
                log.warning("reward failed on a request from %s: %s: %s", _peer(request), type(exc).__name__, message)
                raise HTTPException(500, f"reward failed: {type(exc).__name__}: {message}") from None
        finally:
            budget.release(pixels)
        if order != list(range(len(order))):
            result = _in_order(result, order)
        try:
            content = dumps(result)
        except (TypeError, ValueError):
            content = dumps(json_safe(result))
        return Response(content=content, media_type="application/json")

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        try:
            return await handle(request)
        except HTTPException:
            raise
        except _Disconnected as exc:
            if TIMED_OUT in request.scope:
                log.warning(
                    "closed the connection of %s: body not complete within the read timeout of %g s "
                    "(%d bytes received)",
                    _peer(request),
                    request.scope[TIMED_OUT],
                    exc.received,
                )
            else:
                log.warning(
                    "client %s disconnected before sending its whole body (%d bytes received)",
                    _peer(request),
                    exc.received,
                )
            return Response(status_code=400)
        except Exception as exc:  # noqa: BLE001 - one line in the log, a message to the client, never a traceback
            log.error(
                "internal error on a request from %s: %s: %s",
                _peer(request),
                type(exc).__name__,
                str(exc).replace("\n", " ")[:300],
            )
            return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app
