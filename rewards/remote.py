"""A reward served by ``mrgrpo serve`` on other processes or machines, over HTTP (JSON, PNG in base64).

Images are sent in chunks of ``batch_size`` (whole groups when the served reward compares the
images of a group, and never more pixels per request than the server's ``max_request_pixels``);
chunks go out concurrently (``max_concurrency``, default one per URL), round-robin over ``urls``.

A server that misbehaves never crashes the run and never yields a silent 0:

* a failed request (connection error, timeout, 408/429/5xx) and an answer that is not what the
  protocol promises (not JSON, a wrong number of scores, scores that are not numbers) are retried
  on the next URL with exponential backoff; when every attempt fails the chunk's images are
  returned invalid, counted in ``details["failures"]`` and logged, so the trainer masks them (or
  stops with ``rl.reward_failure: stop``);
* a server that hangs or trickles its answer is cut off after ``timeout`` seconds per attempt;
* a NaN or infinite score makes that image invalid (a failure, logged); the others of the chunk keep
  their scores.

A 4xx other than 408/429 means the request itself is wrong (bad token, too large): that raises
:class:`RemoteRequestError` instead of being retried.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from mrgrpo.rewards.base import Reward, RewardOutput

log = logging.getLogger("mrgrpo.rewards.remote")

#: most bytes read from one answer (a server streaming garbage is cut off)
MAX_ANSWER_BYTES = 64 * 2**20


def encode_png(image: Any) -> str:
    """Base64 PNG of a PIL image (lossless, so a remote score equals the in-process one)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _jsonable(meta: Any) -> dict:
    if not isinstance(meta, dict):
        return {}
    out = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool, type(None), list, dict)):
            try:
                json.dumps(v, allow_nan=False)
            except (TypeError, ValueError, RecursionError):
                continue
            out[str(k)] = v
    return out


class RemoteRequestError(RuntimeError):
    """The server refused the request (4xx): a configuration problem, not retried."""


class BadAnswer(ValueError):
    """The server answered something the protocol does not allow (retried, then the images are invalid)."""


def check_answer(obj: Any, n: int) -> tuple[list[float], list[bool], list[str], dict]:
    """(scores, valid, per-image problems, details) of a server answer for ``n`` images.

    Raises :class:`BadAnswer` when the answer is not ``{"scores": [n numbers], "valid": [n bools]
    (optional), "details": {...} (optional)}``. A NaN/infinite score is not an error of the whole
    answer: that image comes back invalid with its problem named.
    """
    if not isinstance(obj, dict):
        raise BadAnswer(f"answer is a JSON {type(obj).__name__}, not an object")
    scores, valid = obj.get("scores"), obj.get("valid", [True] * n)
    if not isinstance(scores, list) or len(scores) != n:
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise BadAnswer(f"server answered {got} scores for {n} images")
    if not isinstance(valid, list) or len(valid) != n or not all(isinstance(v, bool) for v in valid):
        raise BadAnswer(f"`valid` is not a list of {n} booleans")
    out_s, out_v, problems = [], [], []
    for k, (s, v) in enumerate(zip(scores, valid)):
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise BadAnswer(f"scores[{k}] is {str(s)[:40]!r}, not a number")
        try:
            s = float(s)
        except OverflowError:  # an integer too big for a float
            s = math.inf
        if v and not math.isfinite(s):
            out_s.append(0.0)
            out_v.append(False)
            problems.append(f"non-finite score {s}")
            continue
        out_s.append(s if v else 0.0)
        out_v.append(v)
        problems.append("")
    details = obj.get("details", {})
    return out_s, out_v, problems, details if isinstance(details, dict) else {}


class RemoteReward(Reward):
    """Client of one or more ``mrgrpo serve`` reward servers.

    Args:
        urls: server roots, e.g. ``["http://10.0.0.5:8100"]`` (a single string is accepted).
        token: bearer token if the servers require one.
        timeout: seconds per attempt, the whole answer included (a server that hangs or
            trickles its answer is cut off then).
        max_retries: extra attempts after the first (each on the next URL).
        backoff: seconds before the first retry, doubled each time.
        batch_size: images per request (fewer when the server's pixel budget per request
            asks for it).
        max_concurrency: requests in flight at once (default: one per URL).
        needs_groups: whether the served reward compares the images of a group (then requests
            carry whole groups and the trainer keeps groups together). Default: asked from the
            server's ``/health`` when the client is built (and again at the first call if no
            server answered then).
    """

    name = "remote"
    is_remote = True

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        batch_size: int = 64,
        max_concurrency: int | None = None,
        needs_groups: bool | None = None,
    ):
        import httpx

        self.urls = [urls] if isinstance(urls, str) else list(urls or [])
        if not self.urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in self.urls):
            raise ValueError(f"remote reward: `urls` must be one or more http(s):// server roots, got {urls!r}")
        if batch_size < 1 or max_retries < 0 or not timeout > 0:
            raise ValueError("remote reward: batch_size must be >= 1, max_retries >= 0 and timeout > 0")
        self.max_retries = max_retries
        self.backoff = backoff
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self._needs_groups = needs_groups
        self.max_request_pixels: int | None = None  # read from /health
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        workers = max_concurrency or len(self.urls)
        self.http = httpx.Client(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=max(workers, 4)))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-reward")
        self._cycle = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self._probes = 0
        self._probed = False
        self._probe()

    @property  # read-only here: the server's /health may set it (mypy rejects a property over the base's attribute)
    def needs_groups(self) -> bool:  # type: ignore[override]
        return bool(self._needs_groups)

    def _probe(self) -> None:
        """Read ``needs_groups`` and the request limits from the first server that answers ``GET /health``."""
        import httpx

        self._probes += 1
        for url in self.urls:
            try:
                r = self.http.get(f"{url.rstrip('/')}/health", timeout=min(5.0, self.timeout))
                info = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                continue
            if not isinstance(info, dict):
                continue
            if self._needs_groups is None:
                self._needs_groups = bool(info.get("needs_groups", False))
            limit = info.get("max_request_pixels")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                self.max_request_pixels = limit
            images = info.get("max_images")
            if isinstance(images, int) and not isinstance(images, bool) and images > 0:
                self.batch_size = min(self.batch_size, images)
            self._probed = True
            return

    def _next_url(self) -> str:
        with self._lock:
            return self.urls[next(self._cycle)]

    def _attempt(self, url: str, payload: bytes) -> Any:
        """One POST; the parsed answer, or raises (retriable unless RemoteRequestError)."""
        deadline = time.monotonic() + self.timeout
        with self.http.stream(
            "POST", f"{url.rstrip('/')}/v1/score", content=payload, headers={"content-type": "application/json"}
        ) as r:
            if r.status_code >= 500 or r.status_code in (408, 429):
                raise BadAnswer(f"answered {r.status_code}: {_head(r)}")
            if r.status_code >= 400:
                raise RemoteRequestError(f"reward server {url} rejected the request ({r.status_code}): {_head(r)}")
            buf = bytearray()
            for chunk in r.iter_bytes():
                buf += chunk
                if len(buf) > MAX_ANSWER_BYTES:
                    raise BadAnswer(f"answer is over {MAX_ANSWER_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise BadAnswer(f"answer not complete within the timeout of {self.timeout:g} s")
        try:
            return json.loads(bytes(buf))
        except (ValueError, RecursionError) as exc:
            raise BadAnswer(f"answer is not JSON ({str(exc)[:80]}): {bytes(buf[:80])!r}") from None

    def _post(self, body: dict, n: int) -> tuple[list[float], list[bool], list[str], dict]:
        import httpx

        payload = json.dumps(body).encode()
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            url = self._next_url()
            try:
                return check_answer(self._attempt(url, payload), n)
            except httpx.HTTPError as exc:
                last = f"{url}: {type(exc).__name__}: {exc}"
            except BadAnswer as exc:
                last = f"{url}: {exc}"
            log.warning("remote reward: attempt %d of %d failed: %s", attempt + 1, self.max_retries + 1, last[:300])
        raise ConnectionError(f"reward servers {self.urls} failed after {self.max_retries + 1} attempts: {last}")

    def _split_by_pixels(self, chunk: list[int], images: Sequence[Any]) -> list[list[int]]:
        if not self.max_request_pixels or self.needs_groups:
            return [chunk]
        out: list[list[int]] = []
        cur: list[int] = []
        total = 0
        for i in chunk:
            w, h = getattr(images[i], "size", (0, 0))
            if cur and total + w * h > self.max_request_pixels:
                out.append(cur)
                cur, total = [], 0
            cur.append(i)
            total += w * h
        return out + ([cur] if cur else [])

    def _chunks(self, metadata: list[dict], images: Sequence[Any] = ()) -> list[list[int]]:
        n = len(metadata)
        if not self.needs_groups:
            plain = [list(range(i, min(n, i + self.batch_size))) for i in range(0, n, self.batch_size)]
            return [part for chunk in plain for part in self._split_by_pixels(chunk, images)] if images else plain
        groups: dict[Any, list[int]] = {}
        for i, m in enumerate(metadata):
            key = m.get("group_id", ("image", i)) if isinstance(m, dict) else ("image", i)
            try:
                hash(key)
            except TypeError:
                key = ("group_id", repr(key)[:200])
            groups.setdefault(key, []).append(i)
        chunks: list[list[int]] = []
        cur: list[int] = []
        cur_px = 0
        limit = self.max_request_pixels or 0
        for members in groups.values():  # whole groups; a group bigger than the limits goes alone
            px = (
                sum(
                    int(getattr(images[i], "size", (0, 0))[0]) * int(getattr(images[i], "size", (0, 0))[1])
                    for i in members
                )
                if images
                else 0
            )
            if cur and (len(cur) + len(members) > self.batch_size or (limit and cur_px + px > limit)):
                chunks.append(cur)
                cur, cur_px = [], 0
            cur = cur + members
            cur_px += px
        return chunks + ([cur] if cur else [])

    def _score_chunk(self, idx: list[int], images, prompts, metadata) -> tuple[list[int], tuple | None, str | None]:
        body = {
            "images": [encode_png(images[i]) for i in idx],
            "prompts": [prompts[i] for i in idx],
            "metadata": [_jsonable(metadata[i]) for i in idx],
        }
        try:
            return idx, self._post(body, len(idx)), None
        except ConnectionError as exc:
            return idx, None, str(exc)

    def score(self, images, prompts, metadata):
        if not self._probed and self._probes < 2:  # once more at the first call, not at every call
            self._probe()
        n = len(images)
        scores, valid = [0.0] * n, [False] * n
        details, errors, failures = [], [], 0
        futures = [
            self.pool.submit(self._score_chunk, idx, images, prompts, metadata)
            for idx in self._chunks(metadata, images)
        ]
        for fut in futures:
            idx, answer, err = fut.result()  # RemoteRequestError (a 4xx) propagates
            if answer is None:
                failures += len(idx)
                errors.append(err)
                log.warning("remote reward: %d image(s) invalid (masked): %s", len(idx), err[:300])
                continue
            s, v, problems, d = answer
            bad = [k for k, p in enumerate(problems) if p]
            if bad:
                failures += len(bad)
                errors.append(f"{len(bad)} image(s) with {problems[bad[0]]} from the server")
                log.warning(
                    "remote reward: %d image(s) invalid (masked): the server sent %s", len(bad), problems[bad[0]]
                )
            for k, i in enumerate(idx):
                scores[i], valid[i] = s[k], v[k]
            details.append(d)
        return RewardOutput(
            torch.tensor(scores), torch.tensor(valid), {"failures": failures, "errors": errors, "server": details}
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _head(r: Any) -> str:
    try:
        return next(r.iter_bytes(), b"")[:300].decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return "(no body)"
