"""A generic pointwise VLM judge: P("Yes") to a yes/no question about each image (VQAScore style).

Any OpenAI-compatible chat-completions server that returns logprobs (vLLM, SGLang, ...) works.
One request per (image, question) asks for a single token with ``logprobs`` and ``top_logprobs``;
the score is the probability mass of the first token's "yes" variants (``Yes``, `` yes``, ``YES``
...) among the top logprobs, ``p_yes = sum exp(logprob)`` (VQAScore, Lin et al. 2024), or with
``normalize=True`` ``p_yes / (p_yes + p_no)``. Scores are in [0, 1].

Questions: the template is filled by plain replacement of ``{prompt}`` (the generation prompt) and
``{question}``. Without ``{question}`` there is one question per image (the built-in ``vqascore``
template: 'Does this figure show "{prompt}"? Please answer yes or no.'). With ``{question}`` the
questions come from ``metadata[i][questions_key]`` (a string or a list of strings; UniGenBench- or
GenEval-2-style checklists): the image's score is the mean P(Yes) over its questions, and an image
without questions is invalid. Templates may come from a file (``template_file``).

Requests share the UnifiedReward judge's client: a bounded thread pool, timeouts, retries with
exponential backoff on 408/425/429/5xx and connection errors. An image whose requests fail after
retries, or whose reply has no logprobs, is invalid and counted in ``details["failures"]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mrgrpo.rewards.base import RewardOutput
from mrgrpo.rewards.judge_client import JudgeReward, load_template

VQASCORE_TEMPLATE = 'Does this figure show "{prompt}"? Please answer yes or no.'
QUESTION_TEMPLATE = "{question} Please answer yes or no."
JUDGE_TEMPLATES = {"vqascore": VQASCORE_TEMPLATE, "question": QUESTION_TEMPLATE}


def _word(token: str) -> str:
    return token.strip().strip(".,!:;\"'").lower()


def yes_probability(choice: dict[str, Any], normalize: bool = False) -> float | None:
    """P(Yes) from the first generated token's ``top_logprobs`` of an OpenAI chat choice; None without logprobs
    (or, when ``normalize``, when neither yes nor no is among the top tokens)."""
    content = ((choice or {}).get("logprobs") or {}).get("content") or []
    if not content:
        return None
    first = content[0]
    tops = first.get("top_logprobs") or [{"token": first.get("token", ""), "logprob": first.get("logprob", -math.inf)}]
    p_yes = sum(math.exp(t["logprob"]) for t in tops if _word(t.get("token", "")) == "yes")
    p_no = sum(math.exp(t["logprob"]) for t in tops if _word(t.get("token", "")) == "no")
    p_yes, p_no = min(p_yes, 1.0), min(p_no, 1.0)
    if not normalize:
        return p_yes
    return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else None


def load_judge_template(template: str, template_text: str | None, template_file: str | None) -> tuple[str, str]:
    """(template text, label) from a built-in name, inline text or a file (stripped); it must hold {prompt} or
    {question} (:func:`~mrgrpo.rewards.judge_client.load_template`)."""
    text, label = load_template(
        template, template_text, template_file, JUDGE_TEMPLATES, "vlm_judge", ("{prompt}", "{question}")
    )
    return (text.strip(), label) if template_file is not None else (text, label)


class VLMJudge(JudgeReward):
    """Pointwise yes/no VLM judge scored by P(Yes) from logprobs.

    Args:
        base_url: the server's OpenAI API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: served model name (default: the first of ``GET /models``).
        template: ``"vqascore"`` or ``"question"``; ``template_text`` / ``template_file`` give your own.
        questions_key: metadata field with the question(s) when the template has ``{question}``.
        normalize: score ``p_yes / (p_yes + p_no)`` instead of ``p_yes``.
        top_logprobs: how many alternatives the server returns for the first token (vLLM's default cap is 20).
        other arguments: as :class:`mrgrpo.rewards.unified_reward.UnifiedRewardThink`.
    """

    name = "vlm_judge"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        template: str = "vqascore",
        template_text: str | None = None,
        template_file: str | None = None,
        questions_key: str = "questions",
        normalize: bool = False,
        top_logprobs: int = 20,
        max_concurrency: int = 32,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        backoff_cap: float = 30.0,
        api_key: str | None = None,
        temperature: float = 0.0,
        image_format: str = "png",
        jpeg_quality: int = 95,
    ):
        if not 1 <= top_logprobs <= 20:
            raise ValueError(f"vlm_judge: top_logprobs must be in [1, 20], got {top_logprobs}")
        self.template, self.template_name = load_judge_template(template, template_text, template_file)
        self.per_question = "{question}" in self.template
        self.questions_key, self.normalize, self.top_logprobs = questions_key, bool(normalize), top_logprobs
        self._init_client(
            base_url,
            model,
            api_key,
            timeout,
            max_retries,
            backoff,
            backoff_cap,
            1,
            temperature,
            max_concurrency,
            image_format,
            jpeg_quality,
        )

    def questions(self, prompt: str, meta: dict[str, Any]) -> list[str]:
        """The filled-in texts to ask about one image (empty when the template needs questions the record lacks)."""
        if not self.per_question:
            return [self.template.replace("{prompt}", prompt)]
        qs = (meta or {}).get(self.questions_key) or []
        qs = [qs] if isinstance(qs, str) else list(qs)
        return [self.template.replace("{prompt}", prompt).replace("{question}", str(q)) for q in qs]

    def _ask(self, url: str, text: str) -> tuple[float | None, str | None]:
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
        try:
            choice = self.client.complete_choice(content, logprobs=True, top_logprobs=self.top_logprobs)
        except Exception as exc:  # after retries
            return None, str(exc)
        p = yes_probability(choice, self.normalize)
        if p is None:
            has = bool((choice.get("logprobs") or {}).get("content"))
            why = "neither yes nor no in the top logprobs" if has else "no logprobs in the reply (enable logprobs)"
            return None, why
        return p, None

    def score(self, images, prompts, metadata):
        asked = [self.questions(p, m) for p, m in zip(prompts, metadata)]
        jobs = []
        for i, texts in enumerate(asked):
            if texts:
                url = self._url(images[i])
                jobs.extend((i, self.pool.submit(self._ask, url, t)) for t in texts)
        per_image: dict[int, list[tuple[float | None, str | None]]] = {}
        for i, fut in jobs:
            per_image.setdefault(i, []).append(fut.result())
        scores = torch.zeros(len(images))
        valid = torch.zeros(len(images), dtype=torch.bool)
        errors, probs = [], [None] * len(images)
        for i, results in per_image.items():
            errs = [e for _, e in results if e is not None]
            if errs:
                errors.append(f"image {i}: {errs[0][:300]}")
                continue
            probs[i] = [p for p, _ in results]
            scores[i], valid[i] = sum(probs[i]) / len(probs[i]), True
        return RewardOutput(
            scores,
            valid,
            {
                "template": self.template_name,
                "requests": len(jobs),
                "failures": len(errors),
                "errors": errors[:20],
                "no_question": sum(1 for t in asked if not t),
                "p_yes": probs,
            },
        )
