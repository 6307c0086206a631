"""The client side of every VLM-judge reward: a thread-safe chat-completions client with timeouts and
bounded retries (:class:`ChatClient`), the image encoding it sends, the template loading, and the
base class that owns a client and a bounded thread pool (:class:`JudgeReward`).
"""

from __future__ import annotations

import base64
import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from mrgrpo.rewards.base import Reward


def is_retryable_status(status: int) -> bool:
    """408, 425, 429 and every 5xx are worth retrying; other 4xx are not."""
    return status in (408, 425, 429) or status >= 500


def image_data_url(image: Any, fmt: str = "jpeg", quality: int = 95) -> str:
    """``data:image/<fmt>;base64,...`` of a PIL image (JPEG quality 95 as DeepGen's client, or PNG)."""
    fmt = fmt.lower()
    buf = io.BytesIO()
    if fmt in ("jpeg", "jpg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
        fmt = "jpeg"
    elif fmt == "png":
        image.convert("RGB").save(buf, format="PNG")
    else:
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {fmt!r}")
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode()}"


def load_template(
    template: str,
    template_text: str | None,
    template_file: str | None,
    table: dict[str, str],
    who: str,
    placeholders: tuple[str, ...] = ("{prompt}",),
) -> tuple[str, str]:
    """``(text, label)`` of the judge prompt: ``template_file``'s text, ``template_text``, or ``table[template]``;
    the text must contain at least one of ``placeholders``. ``who`` names the reward in errors."""
    if template_text is not None and template_file is not None:
        raise ValueError(f"{who}: give template_text or template_file, not both")
    if template_file is not None:
        try:
            with open(template_file, encoding="utf-8") as f:
                text, label = f.read(), f"file:{template_file}"
        except OSError as exc:
            raise ValueError(f"{who}: cannot read template_file {template_file!r}: {exc}") from exc
    elif template_text is not None:
        text, label = template_text, "custom"
    elif template in table:
        text, label = table[template], template
    else:
        raise ValueError(
            f"{who}: template must be one of {sorted(table)} (or give template_text / template_file), got {template!r}"
        )
    if not any(p in text for p in placeholders):
        where = (
            f"'{placeholders[0]}' where the prompt goes"
            if len(placeholders) == 1
            else " and/or ".join(f"'{p}'" for p in placeholders)
        )
        raise ValueError(f"{who}: the template must contain {where}")
    return text, label


class ChatClient:
    """A thread-safe OpenAI chat-completions client with timeouts and bounded retries with exponential backoff."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        backoff_cap: float = 30.0,
        max_tokens: int = 4096,
        temperature: float = 0.0,
        max_connections: int = 64,
    ):
        import httpx

        if max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("max_retries must be >= 0, timeout > 0 and backoff >= 0")
        base_url = base_url.rstrip("/")
        if urlparse(base_url).path in ("", "/"):
            base_url += "/v1"  # vLLM's OpenAI API root
        self.base_url = base_url
        self.model = model
        self.max_retries, self.backoff, self.backoff_cap = max_retries, backoff, backoff_cap
        self.max_tokens, self.temperature = max_tokens, temperature
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=max_connections))
        self._model_lock = threading.Lock()

    def _with_retries(self, send) -> Any:
        import httpx

        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.backoff_cap, self.backoff * 2 ** (attempt - 1)) * (1 + 0.1 * random.random()))
            try:
                r = send()
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code < 400:
                return r
            last = f"HTTP {r.status_code}: {r.text[:200]}"
            if not is_retryable_status(r.status_code):
                raise RuntimeError(f"judge at {self.base_url} rejected the request ({last})")
        raise RuntimeError(f"judge at {self.base_url} failed after {self.max_retries + 1} attempts: {last}")

    def model_name(self) -> str:
        """The served model (the first of ``GET /models`` unless given)."""
        with self._model_lock:
            if self.model is None:
                r = self._with_retries(lambda: self.http.get(f"{self.base_url}/models"))
                self.model = r.json()["data"][0]["id"]
            return self.model

    def complete_choice(self, content: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """The first choice (``{"message": ..., "logprobs": ...}``) for one user message; ``extra`` request fields
        (e.g. ``logprobs``) override the defaults. Raises RuntimeError after the last retry or on a malformed reply."""
        payload = {
            "model": self.model_name(),
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **extra,
        }
        r = self._with_retries(lambda: self.http.post(f"{self.base_url}/chat/completions", json=payload))
        try:
            choice = r.json()["choices"][0]
            if "content" not in choice["message"]:
                raise KeyError("message.content")
            return choice
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RuntimeError(f"judge at {self.base_url} sent a malformed completion: {r.text[:200]}") from exc

    def complete(self, content: list[dict[str, Any]]) -> str:
        """The assistant text for one user message; raises RuntimeError after the last retry."""
        return self.complete_choice(content)["message"]["content"] or ""

    def close(self) -> None:
        self.http.close()


class JudgeReward(Reward):
    """A reward that asks a VLM judge server: owns a :class:`ChatClient` and a thread pool of ``max_concurrency``."""

    is_remote = True

    def _init_client(
        self,
        base_url,
        model,
        api_key,
        timeout,
        max_retries,
        backoff,
        backoff_cap,
        max_tokens,
        temperature,
        max_concurrency,
        image_format,
        jpeg_quality,
    ):
        if max_concurrency < 1:
            raise ValueError(f"{self.name}: max_concurrency must be >= 1, got {max_concurrency}")
        if str(image_format).lower() not in ("jpeg", "jpg", "png"):
            raise ValueError(f"{self.name}: image_format must be 'jpeg' or 'png', got {image_format!r}")
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.client = ChatClient(
            base_url,
            model,
            api_key,
            timeout,
            max_retries,
            backoff,
            backoff_cap,
            max_tokens,
            temperature,
            max_connections=max_concurrency,
        )
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=self.name)

    def _url(self, image: Any) -> str:
        return image_data_url(image, self.image_format, self.jpeg_quality)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
