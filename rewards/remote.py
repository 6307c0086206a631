"""A reward served by ``mrgrpo serve`` on other processes/machines, over HTTP (JSON, PNG in base64).

Requests go round-robin over ``urls``; a failed request (connection error, 5xx, 429) is retried on
the next URL with exponential backoff. When every attempt fails the images are returned invalid
(``details["failures"]`` counts them) so the trainer masks them, or stops with
``rl.reward_failure: stop``.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import time
from typing import Any, Sequence

import torch

from mrgrpo.rewards.base import Reward, RewardOutput


def encode_png(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _jsonable(meta: dict) -> dict:
    return {k: v for k, v in (meta or {}).items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}


class RemoteReward(Reward):
    """Client of one or more ``mrgrpo serve`` reward servers.

    Args:
        urls: server roots, e.g. ``["http://10.0.0.5:8100"]`` (a single string is accepted).
        token: bearer token if the servers require one.
        timeout: seconds per request.
        max_retries: extra attempts after the first (each on the next URL).
        backoff: seconds before the first retry, doubled each time.
        batch_size: images per request.
        needs_groups: set True when the served reward compares images of a group.
    """

    name = "remote"
    is_remote = True

    def __init__(self, urls: str | Sequence[str], token: str | None = None, timeout: float = 120.0, max_retries: int = 3,
                 backoff: float = 0.5, batch_size: int = 64, needs_groups: bool = False):
        import httpx

        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("remote reward: give at least one URL in `urls`")
        self.max_retries = max_retries
        self.backoff = backoff
        self.batch_size = batch_size
        self.needs_groups = needs_groups
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)
        self._cycle = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()

    def _next_url(self) -> str:
        with self._lock:
            return self.urls[next(self._cycle)]

    def _post(self, body: dict) -> dict:
        import httpx

        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            url = self._next_url()
            try:
                r = self.http.post(f"{url.rstrip('/')}/v1/score", json=body)
                if r.status_code >= 500 or r.status_code == 429:
                    raise httpx.HTTPStatusError(f"{url} answered {r.status_code}: {r.text[:200]}", request=r.request, response=r)
                if r.status_code >= 400:
                    raise ValueError(f"{url} rejected the request ({r.status_code}): {r.text[:300]}")
                return r.json()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                last = exc
                if attempt < self.max_retries:
                    time.sleep(self.backoff * (2**attempt))
        raise ConnectionError(f"reward servers {self.urls} failed after {self.max_retries + 1} attempts: {last}")

    def score(self, images, prompts, metadata):
        scores, valid, details, failures, errors = [], [], [], 0, []
        step = max(self.batch_size, 1)
        for i in range(0, len(images), step):
            chunk = slice(i, i + step)
            body = {"images": [encode_png(im) for im in images[chunk]], "prompts": list(prompts[chunk]),
                    "metadata": [_jsonable(m) for m in metadata[chunk]]}
            n = len(body["images"])
            try:
                out = self._post(body)
            except ConnectionError as exc:
                scores += [0.0] * n
                valid += [False] * n
                failures += n
                errors.append(str(exc))
                continue
            scores += [float(s) for s in out["scores"]]
            valid += [bool(v) for v in out.get("valid", [True] * n)]
            details.append(out.get("details", {}))
        return RewardOutput(torch.tensor(scores), torch.tensor(valid), {"failures": failures, "errors": errors, "server": details})

    def close(self) -> None:
        self.http.close()
