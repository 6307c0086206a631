"""UnifiedReward(-Think) as a reward, through an OpenAI-compatible chat-completions server (vLLM).

Pairwise mode (``unifiedreward_think``): within each group (``metadata[i]["group_id"]``), every
one of the C(G, 2) pairs is judged, the two images sent as base64 data URLs in one user message
with the prompt template. The text inside ``<answer>...</answer>`` saying "Image 1 is better" /
"Image 2 is better" gives that image a win; anything else (no tag, both, neither) is a tie, 0.5
each. ``reward_i = wins_i / (G - 1)``, so every group's mean is exactly 0.5. ``swap=True`` also
asks with the images in the other order (2x requests) and averages the two verdicts, cancelling
the judge's position bias. Requests run on a bounded thread pool (``max_concurrency``), each with a
``timeout`` and up to ``max_retries`` retries with exponential backoff on 408/429/5xx and
connection errors. A pair whose requests all fail counts as a tie and is listed in
``details["failed"]``; a group where every pair failed is invalid (masked, counted in
``details["failures"]``).

Templates (``template=``; the one used is in ``details["template"]``):

* ``"deepgen"``: DeepGen's RL code's one-liner, verbatim: "Compare these two images based on the
  prompt: {prompt}. Which image is better?"
* ``"official"``: the structure of UnifiedReward-Think's own pairwise image template (the caption
  in 「」; Semantic consistency, Aesthetics, Authenticity and up to two extra dimensions, each
  scored 1-10 for both images in a 3-line block; totals; reasoning in ``<think>``, verdict in
  ``<answer>``), in our words. For a verbatim copy of the judge authors' text (published in
  their Pref-GRPO repository, ``fastvideo/rewards/templates.py``,
  ``get_unifiedreward_think_image_template``) pass it with ``template_file`` or ``template_text``.

Pointwise mode (``unifiedreward_point``): one request per image; the answer's
``<Dim> Score (1-5): x`` lines (UnifiedReward's output format: Alignment, Coherence, Style) are
averaged over ``dimensions`` (default: all given), or a ``Final Score: x`` is read; mapped to
``(s - 1) / 4`` in [0, 1]. An unparsable answer or a failed request is invalid.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import torch

from mrgrpo.rewards.base import RewardOutput
from mrgrpo.rewards.judge_client import (  # noqa: F401  (re-exported)
    ChatClient,
    JudgeReward,
    image_data_url,
    is_retryable_status,
    load_template,
)

DEEPGEN_TEMPLATE = "Compare these two images based on the prompt: {prompt}. Which image is better?"

OFFICIAL_TEMPLATE = """You are an objective and careful judge of image quality. You are given a text caption and two images generated from it, Image 1 and Image 2. Analyse both images closely and decide which one is better.

Procedure:

1. The caption of the images is: 「{prompt}」. Judge the two images on these core dimensions:
- Semantic consistency (how well the image content matches the caption)
- Aesthetics (composition, use of colour, artistic expression)
- Authenticity (realism and fine detail)

2. Add at most two further dimensions only if they clearly matter for this caption or these images (for example creativity, spatial layout, fine-grained detail); otherwise keep the three core dimensions.

3. For every dimension give Image 1 and Image 2 a score from 1 to 10 and a brief reason (2-5 short sentences), as a block of exactly three lines:
    N. Dimension name: 
        Image 1 (x/10) - reason; 
        Image 2 (y/10) - reason

4. After the dimensions, add up the scores of each image and show the sums:
    Total score:
    Image 1: x+x+x=total
    Image 2: y+y+y=total

5. Put all reasoning and scoring inside <think> and </think>.

6. After </think>, give the verdict inside <answer> and </answer>: exactly one of
- Image 1 is better
- Image 2 is better

Rules: keep the line breaks and indentation of the format below; one dimension per block; no Markdown, bullets, bold text or headings; nothing outside <think> and <answer>; the <answer> tag holds only the verdict.

Format:

<think>
1. Semantic consistency: 
    Image 1 (9/10) - ...; 
    Image 2 (7/10) - ...
2. Aesthetics: 
    Image 1 (8/10) - ...; 
    Image 2 (8/10) - ...
3. Authenticity: 
    Image 1 (8/10) - ...; 
    Image 2 (5/10) - ...
Total score:
Image 1: 9+8+8=25
Image 2: 7+8+5=20
</think>
<answer>Image 1 is better</answer>

The example only shows the format; base your judgement on the given caption and images."""  # noqa: E501

POINT_TEMPLATE = """You are shown an image generated from a text caption. Assess the image against the caption on three axes, each rated from 1 to 5:
- Alignment Score: how well the image content matches the caption.
- Coherence Score: how logically consistent the image is (no visual glitches or distorted objects).
- Style Score: how aesthetically pleasing the image is, whatever the caption says.

Answer in exactly this format:

Alignment Score (1-5): X
Coherence Score (1-5): Y
Style Score (1-5): Z

The caption is: [{prompt}]"""  # noqa: E501

POINT_FINAL_TEMPLATE = (
    "You are given a text prompt and an image generated from it. Rate how well the image follows the prompt "
    "and its overall quality on a scale from 1 to 5. Write your reasoning inside <think> and </think>, then "
    "the final score inside <answer> and </answer> as 'Final Score: N'.\nThe prompt is: {prompt}"
)

TEMPLATES = {"deepgen": DEEPGEN_TEMPLATE, "official": OFFICIAL_TEMPLATE}
POINT_TEMPLATES = {"unifiedreward": POINT_TEMPLATE, "final_score": POINT_FINAL_TEMPLATE}
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_DIM_SCORE = re.compile(r"(\w+)\s+Score\s*\(1-5\)\s*[:：]\s*([0-5](?:\.\d+)?)", re.IGNORECASE)
_FINAL_SCORE = re.compile(r"(?:final\s+)?score\s*[:：]\s*([0-9](?:\.\d+)?)", re.IGNORECASE)


def answer_text(text: str, *, require_tag: bool = True) -> str | None:
    """The content of the last ``<answer>...</answer>``; without a tag the whole text, or None when ``require_tag``."""
    found = _ANSWER.findall(text or "")
    if found:
        return found[-1].strip()
    return None if require_tag else (text or "")


def parse_pairwise(text: str, *, require_tag: bool = True) -> int | None:
    """1 or 2 for "Image 1 is better" / "Image 2 is better" in the answer; None when unparsable."""
    body = answer_text(text, require_tag=require_tag)
    if body is None:
        return None
    body = body.lower()
    one, two = "image 1 is better" in body, "image 2 is better" in body
    if one != two:
        return 1 if one else 2
    return None


def parse_point(text: str, dimensions: Sequence[str] | None = None) -> float | None:
    """A 1-5 score from a pointwise answer: the mean of the ``<Dim> Score (1-5): x`` lines (over
    ``dimensions`` when given, all of them otherwise), else a ``Final Score: x``; None when unparsable."""
    body = answer_text(text, require_tag=False) or ""
    dims = {k.lower(): float(v) for k, v in _DIM_SCORE.findall(body)}
    if dims:
        wanted = [d.lower() for d in dimensions] if dimensions else list(dims)
        if any(d not in dims for d in wanted):
            return None
        vals = [dims[d] for d in wanted]
        return sum(vals) / len(vals) if all(1.0 <= v <= 5.0 for v in vals) else None
    if dimensions:
        return None
    m = _FINAL_SCORE.findall(body)
    if m and 1.0 <= float(m[-1]) <= 5.0:
        return float(m[-1])
    return None


def pairwise_win_rates(n: int, verdicts: dict[tuple[int, int], float | None]) -> tuple[list[float], int]:
    """Win rate of each of the ``n`` images of one group from pair verdicts.

    ``verdicts[(i, j)]`` is the share of the pair won by ``i`` (1, 0, 0.5, or a swap average) or
    None for a failed pair (counted as a tie). Returns (``wins / (n - 1)`` per image, failed pairs).
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


class UnifiedRewardThink(JudgeReward):
    """Pairwise UnifiedReward-Think judge: each image's win rate within its group.

    Args:
        base_url: the server's OpenAI API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: served model name (default: the first of ``GET /models``).
        template: ``"deepgen"`` or ``"official"``; ``template_text`` / ``template_file`` give your own
            (with ``{prompt}``).
        swap: also judge every pair in the other order and average (2x requests).
        require_answer_tag: only a verdict inside ``<answer>`` counts (else the whole reply is searched).
        max_concurrency: requests in flight at once (per reward object, shared by all calling threads).
        timeout, max_retries, backoff, backoff_cap: per request (seconds; exponential backoff).
        image_format, jpeg_quality: how images are sent (``jpeg`` 95 as DeepGen's client, or ``png``).
        api_key, max_tokens, temperature: passed to the server.
    """

    name = "unifiedreward_think"
    needs_groups = True

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        template: str = "deepgen",
        template_text: str | None = None,
        template_file: str | None = None,
        swap: bool = False,
        require_answer_tag: bool = True,
        max_concurrency: int = 32,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        backoff_cap: float = 30.0,
        api_key: str | None = None,
        max_tokens: int = 4096,
        temperature: float = 0.0,
        image_format: str = "jpeg",
        jpeg_quality: int = 95,
    ):
        self.template, self.template_name = load_template(template, template_text, template_file, TEMPLATES, self.name)
        self.swap = bool(swap)
        self.require_answer_tag = bool(require_answer_tag)
        self._init_client(
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
        )

    def _judge(self, prompt: str, first: str, second: str) -> tuple[float | None, str | None]:
        """(share of the pair won by ``first``: 1, 0 or 0.5 when unparsable; None on failure, and the error)."""
        content = [
            {"type": "image_url", "image_url": {"url": first}},
            {"type": "image_url", "image_url": {"url": second}},
            {"type": "text", "text": self.template.replace("{prompt}", prompt)},
        ]
        try:
            reply = self.client.complete(content)
        except Exception as exc:  # after retries: the pair is reported and counted as a tie
            return None, str(exc)
        verdict = parse_pairwise(reply, require_tag=self.require_answer_tag)
        score: dict[int | None, float] = {1: 1.0, 2: 0.0}  # anything else (a tie, or None: unparsable) scores 0.5
        return score.get(verdict, 0.5), None if verdict else "unparsable"

    def score(self, images, prompts, metadata):
        urls = [self._url(im) for im in images]
        groups: dict[Any, list[int]] = {}
        for i, meta in enumerate(metadata):
            key = meta.get("group_id", ("prompt", prompts[i])) if isinstance(meta, dict) else ("prompt", prompts[i])
            try:
                hash(key)
            except TypeError:  # a list / object group_id from careless metadata: group by its text
                key = ("group_id", repr(key)[:200])
            groups.setdefault(key, []).append(i)
        jobs = {}
        for key, members in groups.items():
            for a, b in itertools.combinations(range(len(members)), 2):
                i, j = members[a], members[b]
                jobs[(key, a, b, 0)] = self.pool.submit(self._judge, prompts[i], urls[i], urls[j])
                if self.swap:
                    jobs[(key, a, b, 1)] = self.pool.submit(self._judge, prompts[i], urls[j], urls[i])
        scores = torch.zeros(len(images))
        valid = torch.zeros(len(images), dtype=torch.bool)
        failed_list: list[dict[str, Any]] = []
        n_failed_pairs = unparsable = failures = 0
        for key, members in groups.items():
            verdicts: dict[tuple[int, int], float | None] = {}
            for a, b in itertools.combinations(range(len(members)), 2):
                results = []
                for order in (0, 1) if self.swap else (0,):
                    share, err = jobs[(key, a, b, order)].result()
                    if err == "unparsable":
                        unparsable += 1
                    elif err is not None and len(failed_list) < 50:
                        failed_list.append(
                            {"group": str(key), "i": members[a], "j": members[b], "order": order, "error": err[:300]}
                        )
                    if share is not None:
                        results.append(share if order == 0 else 1.0 - share)
                verdicts[(a, b)] = sum(results) / len(results) if results else None
            rates, failed = pairwise_win_rates(len(members), verdicts)
            n_failed_pairs += failed
            if len(members) > 1 and failed < len(verdicts):
                for m, rate in zip(members, rates):
                    scores[m], valid[m] = rate, True
            elif len(members) > 1:  # every pair of the group failed
                failures += len(members)
        n_pairs = sum(len(m) * (len(m) - 1) // 2 for m in groups.values())
        return RewardOutput(
            scores,
            valid,
            {
                "template": self.template_name,
                "swap": self.swap,
                "pairs": n_pairs,
                "requests": len(jobs),
                "failed_pairs": n_failed_pairs,
                "failed": failed_list,
                "ties_unparsable": unparsable,
                "failures": failures,
                "singleton_groups": sum(1 for m in groups.values() if len(m) == 1),
            },
        )


class UnifiedRewardPoint(JudgeReward):
    """Pointwise UnifiedReward: a 1-5 judgement per image mapped to ``(s - 1) / 4`` in [0, 1].

    Args:
        template: ``"unifiedreward"`` (Alignment / Coherence / Style scores) or ``"final_score"``
            (think-style ``Final Score: N``); ``template_text`` / ``template_file`` give your own.
        dimensions: the ``<Dim> Score (1-5)`` lines to average (default: every one in the answer).
        other arguments: as :class:`UnifiedRewardThink`.
    """

    name = "unifiedreward_point"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        template: str = "unifiedreward",
        template_text: str | None = None,
        template_file: str | None = None,
        dimensions: Sequence[str] | None = None,
        max_concurrency: int = 32,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        backoff_cap: float = 30.0,
        api_key: str | None = None,
        max_tokens: int = 4096,
        temperature: float = 0.0,
        image_format: str = "jpeg",
        jpeg_quality: int = 95,
    ):
        self.template, self.template_name = load_template(
            template, template_text, template_file, POINT_TEMPLATES, self.name
        )
        self.dimensions = list(dimensions) if dimensions else None
        self._init_client(
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
        )

    def _one(self, image: Any, prompt: str) -> tuple[float | None, str | None]:
        content = [
            {"type": "image_url", "image_url": {"url": self._url(image)}},
            {"type": "text", "text": self.template.replace("{prompt}", prompt)},
        ]
        try:
            reply = self.client.complete(content)
        except Exception as exc:
            return None, str(exc)
        value = parse_point(reply, self.dimensions)
        return value, None if value is not None else "unparsable"

    def score(self, images, prompts, metadata):
        results = list(self.pool.map(self._one, images, prompts))
        scores = torch.tensor([(s - 1.0) / 4.0 if s is not None else 0.0 for s, _ in results])
        valid = torch.tensor([s is not None for s, _ in results], dtype=torch.bool)
        errors = [e for _, e in results if e not in (None, "unparsable")]
        return RewardOutput(
            scores,
            valid,
            {
                "template": self.template_name,
                "failures": len(errors),
                "unparsable": sum(1 for _, e in results if e == "unparsable"),
                "errors": [e[:300] for e in errors[:20]],
                "raw_scores": [s for s, _ in results],
            },
        )
