"""UnifiedReward-Think as a reward, through an OpenAI-compatible chat-completions server (vLLM).

Pairwise mode (``unifiedreward_think``): within each group (``metadata[i]["group_id"]``), every
one of the C(G, 2) pairs is judged; the answer inside ``<answer>...</answer>`` naming
"Image 1 is better" / "Image 2 is better" gives that image a win, anything else is a tie (0.5
each). ``reward = wins / (G - 1)``, so a group's mean is 0.5. ``swap=True`` also asks with the
images in the other order (2x requests) and averages, cancelling position bias. A pair whose
requests all fail (after retries with backoff on 429 / 5xx / connection errors) counts as a tie
and is reported in ``details``; a group where every pair failed is invalid.

Pointwise mode (``unifiedreward_point``): one request per image, the judge's 1-5 score parsed
from the answer, mapped to ``(score - 1) / 4`` in [0, 1]; unparsable answers are invalid.

Templates: ``"deepgen"`` (the one-liner DeepGen's RL code sends) and ``"official"`` (a long
template in the structure UnifiedReward-Think was trained on: dimensions scored 1-10 inside
``<think>``, verdict inside ``<answer>``; pass ``template_text`` to use a verbatim copy of the
judge's own). The template used is recorded in ``details["template"]``.
"""

from __future__ import annotations

import base64
import io
import itertools
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from mrgrpo.rewards.base import Reward, RewardOutput

DEEPGEN_TEMPLATE = "Compare these two images based on the prompt: {prompt}. Which image is better?"
OFFICIAL_TEMPLATE = (
    "You are given a text prompt and two images generated from it (Image 1, then Image 2). "
    "Compare them carefully.\n"
    "Evaluate both images on these dimensions: 1. Semantic consistency with the prompt; "
    "2. Aesthetics (composition, colour, lighting); 3. Authenticity (realism, absence of artifacts). "
    "You may add up to two further dimensions if clearly relevant. For each dimension give Image 1 and "
    "Image 2 a score from 1 to 10 with a short reason, then add up each image's total and show the sum.\n"
    "Write all reasoning inside <think> and </think>. Then, inside <answer> and </answer>, write exactly "
    "one of: Image 1 is better, Image 2 is better.\n"
    "The prompt is: {prompt}"
)
POINT_TEMPLATE = (
    "You are given a text prompt and an image generated from it. Rate how well the image follows the prompt "
    "and its overall quality on a scale from 1 to 5. Write your reasoning inside <think> and </think>, then "
    "the final score inside <answer> and </answer> as 'Final Score: N'.\nThe prompt is: {prompt}"
)
TEMPLATES = {"deepgen": DEEPGEN_TEMPLATE, "official": OFFICIAL_TEMPLATE}
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def image_data_url(image: Any, fmt: str = "PNG") -> str:
    """``data:image/png;base64,...`` of a PIL image."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def parse_pairwise(text: str) -> int | None:
    """1 or 2 for "Image 1/2 is better" inside <answer> (or in the text when there is no tag); None otherwise."""
    m = _ANSWER.search(text or "")
    body = (m.group(1) if m else text or "").lower()
    one, two = "image 1 is better" in body, "image 2 is better" in body
    if one and not two:
        return 1
    if two and not one:
        return 2
    return None


def parse_point(text: str) -> float | None:
    """The 1-5 score of a pointwise answer, or None."""
    m = _ANSWER.search(text or "")
    body = m.group(1) if m else (text or "")
    nums = re.findall(r"(?:score\s*[:：]?\s*)?(\d+(?:\.\d+)?)", body, flags=re.IGNORECASE)
    for n in reversed(nums):
        value = float(n)
        if 1.0 <= value <= 5.0:
            return value
    return None


def pairwise_win_rates(n: int, verdicts: dict[tuple[int, int], float | None]) -> tuple[list[float], int]:
    """Win rate per image of one group from pair verdicts.

    ``verdicts[(i, j)]`` is the share of the pair won by ``i`` (1, 0, 0.5) or None for a failed
    pair (counted as a tie). Returns (``wins / (n - 1)`` per image, number of failed pairs).
    """
    wins = [0.0] * n
    failed = 0
    for (i, j), v in verdicts.items():
        if v is None:
            failed += 1
            v = 0.5
        wins[i] += v
        wins[j] += 1.0 - v
    return [w / max(1, n - 1) for w in wins], failed


class ChatClient:
    """A minimal OpenAI chat-completions client with bounded retries and exponential backoff."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 4, backoff: float = 1.0, max_tokens: int = 2048, temperature: float = 0.0):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.temperature = temperature
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=64))
        self._model_lock = threading.Lock()

    def _model_name(self) -> str:
        with self._model_lock:
            if self.model is None:
                r = self.http.get(f"{self.base_url}/models")
                r.raise_for_status()
                self.model = r.json()["data"][0]["id"]
            return self.model

    def complete(self, content: list[dict[str, Any]]) -> str:
        """The assistant text for one user message; raises after the last retry."""
        import httpx

        payload = {"model": self._model_name(), "messages": [{"role": "user", "content": content}],
                   "max_tokens": self.max_tokens, "temperature": self.temperature}
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                r = self.http.post(f"{self.base_url}/chat/completions", json=payload)
                if r.status_code in _RETRY_STATUS:
                    raise httpx.HTTPStatusError(f"server answered {r.status_code}", request=r.request, response=r)
                r.raise_for_status()
                return r.json()["choices"][0]["message"]["content"] or ""
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status is not None and status not in _RETRY_STATUS:
                    raise
                last = exc
                if attempt < self.max_retries:
                    time.sleep(self.backoff * (2**attempt) * (1 + 0.1 * random.random()))
        raise RuntimeError(f"judge at {self.base_url} failed after {self.max_retries + 1} attempts: {last}")

    def close(self) -> None:
        self.http.close()


class UnifiedRewardThink(Reward):
    """Pairwise UnifiedReward-Think judge (group win rates).

    Args:
        base_url: the server's OpenAI API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: served model name (default: the first of ``GET /models``).
        template: ``"deepgen"`` or ``"official"``; ``template_text`` overrides with a custom ``{prompt}`` string.
        swap: also judge every pair in the other order.
        max_concurrency: requests in flight at once.
        timeout, max_retries, backoff: per request.
    """

    name = "unifiedreward_think"
    is_remote = True
    needs_groups = True

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str | None = None, template: str = "deepgen",
                 template_text: str | None = None, swap: bool = False, max_concurrency: int = 32, timeout: float = 300.0,
                 max_retries: int = 4, backoff: float = 1.0, api_key: str | None = None, max_tokens: int = 2048):
        if template_text is None and template not in TEMPLATES:
            raise ValueError(f"unifiedreward_think: template must be one of {sorted(TEMPLATES)} (or give template_text), got {template!r}")
        self.template_name = "custom" if template_text else template
        self.template = template_text or TEMPLATES[template]
        if "{prompt}" not in self.template:
            raise ValueError("unifiedreward_think: the template must contain '{prompt}'")
        self.swap = swap
        self.client = ChatClient(base_url, model, api_key, timeout, max_retries, backoff, max_tokens)
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency)

    def _judge(self, prompt: str, a: str, b: str) -> float | None:
        """Share of the pair won by the first image (1, 0, 0.5 for an unparsable answer), None on failure."""
        content = [{"type": "image_url", "image_url": {"url": a}}, {"type": "image_url", "image_url": {"url": b}},
                   {"type": "text", "text": self.template.format(prompt=prompt)}]
        try:
            verdict = parse_pairwise(self.client.complete(content))
        except Exception:
            return None
        return {1: 1.0, 2: 0.0}.get(verdict, 0.5)

    def score(self, images, prompts, metadata):
        urls = [image_data_url(im) for im in images]
        groups: dict[Any, list[int]] = {}
        for i, meta in enumerate(metadata):
            groups.setdefault((meta or {}).get("group_id", prompts[i]), []).append(i)
        jobs = {}
        for key, members in groups.items():
            for a, b in itertools.combinations(range(len(members)), 2):
                i, j = members[a], members[b]
                jobs[(key, a, b, 0)] = self.pool.submit(self._judge, prompts[i], urls[i], urls[j])
                if self.swap:
                    jobs[(key, a, b, 1)] = self.pool.submit(self._judge, prompts[i], urls[j], urls[i])
        scores = torch.zeros(len(images))
        valid = torch.zeros(len(images), dtype=torch.bool)
        failed_pairs, ties = 0, 0
        for key, members in groups.items():
            verdicts: dict[tuple[int, int], float | None] = {}
            for a, b in itertools.combinations(range(len(members)), 2):
                results = [jobs[(key, a, b, 0)].result()]
                if self.swap:
                    r = jobs[(key, a, b, 1)].result()
                    results.append(None if r is None else 1.0 - r)
                ok = [r for r in results if r is not None]
                verdicts[(a, b)] = sum(ok) / len(ok) if ok else None
                ties += sum(1 for r in ok if r == 0.5)
            rates, failed = pairwise_win_rates(len(members), verdicts)
            failed_pairs += failed
            if len(members) > 1 and failed < len(verdicts):
                for m, rate in zip(members, rates):
                    scores[m] = rate
                    valid[m] = True
        n_pairs = sum(len(m) * (len(m) - 1) // 2 for m in groups.values())
        return RewardOutput(scores, valid, {"template": self.template_name, "pairs": n_pairs, "failed_pairs": failed_pairs,
                                            "ties": ties, "failures": int((~valid).sum())})

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.client.close()


class UnifiedRewardPoint(Reward):
    """Pointwise UnifiedReward (1-5 score per image, mapped to [0, 1])."""

    name = "unifiedreward_point"
    is_remote = True

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str | None = None, template_text: str | None = None,
                 max_concurrency: int = 32, timeout: float = 300.0, max_retries: int = 4, backoff: float = 1.0,
                 api_key: str | None = None, max_tokens: int = 1024):
        self.template = template_text or POINT_TEMPLATE
        self.client = ChatClient(base_url, model, api_key, timeout, max_retries, backoff, max_tokens)
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency)

    def _one(self, image: Any, prompt: str) -> tuple[float | None, str]:
        content = [{"type": "image_url", "image_url": {"url": image_data_url(image)}},
                   {"type": "text", "text": self.template.format(prompt=prompt)}]
        try:
            return parse_point(self.client.complete(content)), "ok"
        except Exception as exc:
            return None, f"error: {exc}"

    def score(self, images, prompts, metadata):
        results = list(self.pool.map(self._one, images, prompts))
        scores = torch.tensor([(s - 1.0) / 4.0 if s is not None else 0.0 for s, _ in results])
        valid = torch.tensor([s is not None for s, _ in results])
        failures = sum(1 for _, status in results if status != "ok")
        return RewardOutput(scores, valid, {"failures": failures, "unparsable": int((~valid).sum()) - failures})

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.client.close()
