"""A reward served by ``mrgrpo serve`` on other processes or machines, over HTTP (JSON, PNG in base64).

Images are sent in chunks of ``batch_size`` (whole groups when the served reward compares the
images of a group); chunks go out concurrently (``max_concurrency``, default one per URL),
round-robin over ``urls``. A failed request (connection error, timeout, 408/429/5xx) is retried
on the next URL with exponential backoff. When every attempt fails the chunk's images are
returned invalid and counted in ``details["failures"]`` so the trainer masks them (or stops with
``rl.reward_failure: stop``). A 4xx other than 408/429 means the request itself is wrong (bad
token, too large): that raises a clear error instead of being retried.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import torch

from mrgrpo.rewards.base import Reward, RewardOutput, group_chunks


def encode_png(image: Any) -> str:
    """Base64 PNG of a PIL image (lossless, so a remote score equals the in-process one)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _jsonable(meta: dict) -> dict:
    return {k: v for k, v in (meta or {}).items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}


class RemoteRequestError(RuntimeError):
    """The server refused the request (4xx): a configuration problem, not retried."""


class RemoteReward(Reward):
    """Client of one or more ``mrgrpo serve`` reward servers.

    Args:
        urls: server roots, e.g. ``["http://10.0.0.5:8100"]`` (a single string is accepted).
        token: bearer token if the servers require one.
        timeout: seconds per request.
        max_retries: extra attempts after the first (each on the next URL).
        backoff: seconds before the first retry, doubled each time.
        batch_size: images per request.
        max_concurrency: requests in flight at once (default: one per URL).
        needs_groups: whether the served reward compares the images of a group (then requests
            carry whole groups and the trainer keeps groups together). Default: asked from the
            server's ``/health`` when the client is built (and again at the first call if no
            server answered then).
    """

    name = "remote"
    is_remote = True

    def __init__(self, urls: str | Sequence[str], token: str | None = None, timeout: float = 120.0, max_retries: int = 3,
                 backoff: float = 0.5, batch_size: int = 64, max_concurrency: int | None = None, needs_groups: bool | None = None):
        import httpx

        self.urls = [urls] if isinstance(urls, str) else list(urls or [])
        if not self.urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in self.urls):
            raise ValueError(f"remote reward: `urls` must be one or more http(s):// server roots, got {urls!r}")
        if batch_size < 1 or max_retries < 0:
            raise ValueError("remote reward: batch_size must be >= 1 and max_retries >= 0")
        self.max_retries = max_retries
        self.backoff = backoff
        self.batch_size = batch_size
        self._needs_groups = needs_groups
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        workers = max_concurrency or len(self.urls)
        self.http = httpx.Client(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=max(workers, 4)))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-reward")
        self._cycle = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        if needs_groups is None:
            self._probe()

    @property
    def needs_groups(self) -> bool:
        return bool(self._needs_groups)

    def _probe(self) -> None:
        """Read ``needs_groups`` from the first server that answers ``GET /health``."""
        import httpx

        for url in self.urls:
            try:
                r = self.http.get(f"{url.rstrip('/')}/health", timeout=5.0)
                if r.status_code == 200:
                    self._needs_groups = bool(r.json().get("needs_groups", False))
                    return
            except (httpx.HTTPError, ValueError):
                continue

    def _next_url(self) -> str:
        with self._lock:
            return self.urls[next(self._cycle)]

    def _post(self, body: dict) -> dict:
        import httpx

        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            url = self._next_url()
            try:
                r = self.http.post(f"{url.rstrip('/')}/v1/score", json=body)
            except httpx.TransportError as exc:
                last = f"{url}: {type(exc).__name__}: {exc}"
                continue
            if r.status_code >= 500 or r.status_code in (408, 429):
                last = f"{url} answered {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 400:
                raise RemoteRequestError(f"reward server {url} rejected the request ({r.status_code}): {r.text[:300]}")
            return r.json()
        raise ConnectionError(f"reward servers {self.urls} failed after {self.max_retries + 1} attempts: {last}")

    def _chunks(self, metadata: list[dict]) -> list[list[int]]:
        ids = [(m or {}).get("group_id", i) for i, m in enumerate(metadata)] if self.needs_groups else None
        return group_chunks(ids, self.batch_size, len(metadata))

    def _score_chunk(self, idx: list[int], images, prompts, metadata) -> tuple[list[int], dict | None, str | None]:
        body = {"images": [encode_png(images[i]) for i in idx], "prompts": [prompts[i] for i in idx],
                "metadata": [_jsonable(metadata[i]) for i in idx]}
        try:
            out = self._post(body)
        except ConnectionError as exc:
            return idx, None, str(exc)
        if len(out.get("scores", [])) != len(idx):
            return idx, None, f"server answered {len(out.get('scores', []))} scores for {len(idx)} images"
        return idx, out, None

    def score(self, images, prompts, metadata):
        if self._needs_groups is None:
            self._probe()
        n = len(images)
        scores, valid = [0.0] * n, [False] * n
        details, errors, failures = [], [], 0
        futures = [self.pool.submit(self._score_chunk, idx, images, prompts, metadata) for idx in self._chunks(metadata)]
        for fut in futures:
            idx, out, err = fut.result()  # RemoteRequestError (a 4xx) propagates
            if out is None:
                failures += len(idx)
                errors.append(err)
                continue
            for k, i in enumerate(idx):
                scores[i] = float(out["scores"][k])
                valid[i] = bool(out.get("valid", [True] * len(idx))[k])
            details.append(out.get("details", {}))
        return RewardOutput(torch.tensor(scores), torch.tensor(valid), {"failures": failures, "errors": errors, "server": details})

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()
