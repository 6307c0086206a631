"""OCR ``mode: deepgen`` against an independent transcription of DeepGen's released scorer.

The reference below is written from the release's rules (its ``ocr_scorer_service`` defaults),
in a deliberately different style from ``mrgrpo.rewards.ocr`` (character loops, a full DP matrix,
no pruning, the release's exact best-match loop) and calls none of its helpers. Hundreds of
seeded cases -- perfect reads, confusable characters, typos, case changes, truncation, lines
split, extra text, low-confidence lines -- must score equal to float precision.
"""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from mrgrpo.rewards import ocr as ocr_module
from mrgrpo.rewards.ocr import OCRReward, deepgen_score, flowgrpo_score, multi_segment_score, quoted_segments


# -- the reference: the released rules, transcribed ---------------------------------------------
def _ref_targets(prompt: str) -> list[str]:
    """Text between pairs of straight double quotes, each non-empty stretch (release: ``"([^"]+)"``)."""
    out, i = [], 0
    while True:
        start = prompt.find('"', i)
        if start < 0:
            return out
        end = prompt.find('"', start + 1)
        if end < 0:
            return out
        if end > start + 1:
            out.append(prompt[start + 1 : end])
            i = end + 1
        else:  # '""' matches nothing; the second quote may open the next segment
            i = start + 1


def _ref_norm(text: str, case_sensitive: bool = True, ignore_punct: bool = True) -> str:
    kept = [ch for ch in text if not ch.isspace()]
    if ignore_punct:
        kept = [ch for ch in kept if ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"]
    s = "".join(kept)
    return s if case_sensitive else s.lower()


def _ref_fold(text: str) -> str:
    table = {"0": "o", "1": "l", "i": "l", "j": "l", "5": "s", "v": "w"}
    return "".join(table[ch] if ch in table else ch for ch in text)


def _ref_edit_distance(a: str, b: str) -> int:
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        dp[i][0] = i
    for j in range(len(b) + 1):
        dp[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            dp[i][j] = min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + (0 if a[i - 1] == b[j - 1] else 1))
    return dp[len(a)][len(b)]


def _ref_reward(
    ocr_items: list[tuple[str, float | None]],
    prompt: str,
    *,
    min_conf: float = 0.0,
    ngram_max: int = 3,
    case_sensitive: bool = True,
    ignore_punct: bool = True,
    fold: bool = True,
) -> float:
    """The released reward of one image (0.0 where the release returns 0 for want of a target)."""
    targets = _ref_targets(prompt)
    if not targets:
        return 0.0
    tokens = []
    for text, conf in ocr_items:
        c = 0.0 if conf is None else float(conf)
        if c < min_conf or not text:
            continue
        tokens.append(text)
    norms = [n for n in (_ref_norm(t, case_sensitive, ignore_punct) for t in tokens) if n != ""]
    cands = list(norms)
    if len(norms) >= 2 and ngram_max >= 2:
        for n in range(2, ngram_max + 1):
            for i0 in range(0, len(norms) - n + 1):
                cands.append("".join(norms[i0 : i0 + n]))
    if norms:
        cands.append("".join(norms))
    seen, uniq = set(), []
    for c in cands:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    weighted, total_len = 0.0, 0
    for target in targets:
        t = _ref_norm(target, case_sensitive, ignore_punct)
        L = len(t)
        total_len += L
        if L == 0:
            best = 0
        elif not uniq:
            best = L
        else:
            best = L
            ft = _ref_fold(t) if fold else t
            for cand in uniq:
                d = _ref_edit_distance(cand, t)
                if fold:
                    d = min(d, _ref_edit_distance(_ref_fold(cand), ft))
                if d < best:
                    best = d
                    if best == 0:
                        break
        best = min(best, L)
        r = 1.0 - best / L if L > 0 else 0.0
        weighted += r * L
    return weighted / total_len if total_len > 0 else 0.0


# -- generated cases --------------------------------------------------------------------------------
_WORDS = [
    "OPEN",
    "Sale",
    "coffee",
    "Grand",
    "Opening",
    "2024",
    "v1.0",
    "ICE",
    "Cream",
    "jazz",
    "NIGHT",
    "Hello",
    "World",
    "Big",
    "SALE",
    "50%",
    "OFF",
    "Today",
    "only!",
    "Welcome",
    "home",
    "iPhone",
    "Café",
    "Müller",
    "東京",
    "I/O",
    "Vivid",
    "voices",
    "O'Neil",
    "JOIN",
    "us",
    "10:30",
    "AM",
    "Library",
    "Quiet",
    "please",
    "VOLT",
    "wow",
    "Level",
    "5",
    "lost",
    "&",
    "found",
    "No.1",
    "Jump",
    "Oil",
    "Silver",
    "Moon",
    "DJ",
    "ijl",
    "S0L0",
    "L1ve",
]
_CONFUSE = {
    "0": "O",
    "O": "0",
    "o": "0",
    "1": "l",
    "l": "1",
    "I": "l",
    "i": "j",
    "j": "i",
    "5": "S",
    "S": "5",
    "s": "5",
    "v": "w",
    "w": "v",
    "V": "W",
    "W": "V",
    "B": "8",
    "Z": "2",
}
_TEMPLATES = [
    "A poster with the title {0}",
    "A neon sign that reads {0} above the door",
    "A storefront: {0} on top and {1} below",
    "A book cover, title {0}, author {1}, tagline {2}",
    "A menu board listing {0}, {1}, {2} and {3}",
    "A mug printed with {0}",
    "A banner saying {0} in bold letters, with {1} in small print",
]


def _phrase(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))


def _quote(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.08:
        return f"“{text}”"  # curly: the release does not read these
    if r < 0.12:
        return f"'{text}'"
    return f'"{text}"'


def _corrupt(rng: random.Random, s: str) -> str:
    kind = rng.choice(["perfect", "confuse", "typo", "case", "truncate", "punct", "mixed"])
    chars = list(s)
    if kind in ("confuse", "mixed"):
        chars = [_CONFUSE.get(c, c) if rng.random() < 0.4 else c for c in chars]
    if kind in ("typo", "mixed") and chars:
        for _ in range(rng.randint(1, 3)):
            op, k = rng.randrange(3), rng.randrange(len(chars))
            if op == 0:
                chars.insert(k, rng.choice("abcxyzEQR7"))
            elif op == 1 and len(chars) > 1:
                del chars[k]
            else:
                chars[k] = rng.choice("abcxyzEQR7")
    s = "".join(chars)
    if kind == "case":
        s = rng.choice([str.upper, str.lower, str.title, str.swapcase])(s)
    if kind == "truncate" and len(s) > 2:
        s = s[: rng.randint(1, len(s) - 1)] if rng.random() < 0.7 else s[rng.randint(1, len(s) - 1) :]
    if kind == "punct":
        s = s.replace(" ", rng.choice(["", "-", ".", " . "]))
    return s


def _simulated_ocr(rng: random.Random, segments: list[str]) -> list[tuple[str, float | None]]:
    lines: list[str] = []
    for seg in segments:
        if rng.random() < 0.12:
            continue  # not rendered / not read
        read = _corrupt(rng, seg)
        words = read.split(" ")
        how = rng.random()
        if how < 0.25 and len(words) > 1:  # split over lines
            cut = sorted(rng.sample(range(1, len(words)), k=min(len(words) - 1, rng.randint(1, 2))))
            parts = [" ".join(words[a:b]) for a, b in zip([0] + cut, cut + [len(words)])]
            lines.extend(parts)
        elif how < 0.35 and len(read) > 3:  # split inside a word
            k = rng.randint(1, len(read) - 1)
            lines.extend([read[:k], read[k:]])
        elif how < 0.45 and lines:  # shares a line with the previous text
            lines[-1] = lines[-1] + " " + read
        else:
            lines.append(read)
    if rng.random() < 0.4:  # extra text somewhere
        for _ in range(rng.randint(1, 3)):
            lines.insert(rng.randint(0, len(lines)), _phrase(rng))
    if rng.random() < 0.15:
        lines.insert(rng.randint(0, len(lines)), rng.choice(["", "...", "—", "  "]))
    if rng.random() < 0.1:
        lines = lines[: rng.randint(0, len(lines))]
    if rng.random() < 0.2:
        rng.shuffle(lines)
    confs: list[float | None] = [round(rng.uniform(0.5, 1.0), 3) for _ in lines]
    for i in range(len(confs)):
        r = rng.random()
        if r < 0.05:
            confs[i] = 0.0
        elif r < 0.1:
            confs[i] = round(rng.uniform(0.0, 0.3), 3)
        elif r < 0.12:
            confs[i] = None
    return list(zip(lines, confs))


def _cases(n: int, seed: int) -> list[tuple[str, list[tuple[str, float | None]]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        template = rng.choice(_TEMPLATES)
        k = template.count("{")
        segments = [_phrase(rng) for _ in range(k)]
        if rng.random() < 0.05:
            segments[0] = rng.choice(["!!!", "東京", "—", " "])
        prompt = template.format(*[_quote(rng, s) for s in segments])
        out.append((prompt, _simulated_ocr(rng, segments)))
    return out


class _ListEngine:
    """Returns queued OCR outputs, one per image (confidence ``None`` read as 0.0, as a parser would)."""

    def __init__(self):
        self.queue: list[list[tuple[str, float | None]]] = []

    def __call__(self, image):
        items = self.queue.pop(0)
        if items is None:
            raise RuntimeError("engine crashed")
        return [(t, 0.0 if c is None else c) for t, c in items]


@pytest.fixture()
def fake_engine(monkeypatch):
    engine = _ListEngine()
    monkeypatch.setattr(ocr_module, "get_engine", lambda *a, **k: engine)
    return engine


def test_deepgen_mode_equals_the_released_rules_on_generated_cases(fake_engine):
    cases = _cases(600, seed=1234)
    reward = OCRReward(mode="deepgen")
    im = Image.new("RGB", (4, 4))
    has_target = [any(_ref_norm(t) for t in _ref_targets(p)) for p, _ in cases]
    fake_engine.queue = [items for (_, items), v in zip(cases, has_target) if v]  # only images with a target are read
    out = reward([im] * len(cases), [p for p, _ in cases])
    assert fake_engine.queue == []
    ref = [_ref_reward(items, prompt) for prompt, items in cases]
    assert out.valid.tolist() == has_target  # the one deviation: no (scorable) quoted text -> invalid, not 0
    # the reward tensor is float32, as the release's scores once its trainer stores them: equal bit for bit
    ref32 = torch.tensor(ref, dtype=torch.float32)
    for i in range(len(cases)):
        if has_target[i]:
            assert out.scores[i].item() == ref32[i].item(), (i, cases[i], out.scores[i].item(), ref[i])
            lines = [t for t, c in cases[i][1] if t and (0.0 if c is None else c) >= 0.0]
            segments = [s for s in ocr_module.deepgen_segments(cases[i][0]) if _ref_norm(s)]
            assert abs(deepgen_score(lines, segments)[0] - ref[i]) <= 1e-12  # and in float64 to float precision
        else:
            assert ref[i] == 0.0  # where the release returns its silent 0
    scored = [r for r, v in zip(ref, has_target) if v]
    # the cases are not degenerate: perfect, partial and failed reads all occur
    assert len(scored) >= 500
    assert sum(r == 1.0 for r in scored) > 50 and sum(r == 0.0 for r in scored) > 20
    assert sum(0.0 < r < 1.0 for r in scored) > 300
    # ... and they tell the scorers apart: Flow-GRPO's and the extended variant differ from the release on many
    flow_gap, multi_gap = [], []
    for (p, items), v, r in zip(cases, has_target, ref):
        if not v:
            continue
        first = _ref_targets(p)[0]
        if "".join(first.split()):
            flow_gap.append(abs(flowgrpo_score("".join(t for t, c in items if (c or 0.0) > 0), first) - r))
        segments = [s for s in _ref_targets(p) if _ref_norm(s)]
        multi_gap.append(abs(multi_segment_score([t for t, c in items if t], segments)[0] - r))
    assert sum(g > 1e-9 for g in multi_gap) > 20 and sum(g > 1e-9 for g in flow_gap) > 100


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(min_conf=0.2),
        dict(ngram_max=1),
        dict(ngram_max=5),
        dict(case_sensitive=False),
        dict(ignore_punct=False),
        dict(fold=False),
    ],
)
def test_deepgen_options_follow_the_released_switches(options):
    """The release's environment switches (OCR_MIN_CONF, OCR_NGRAM_MAX, OCR_CASE_SENSITIVE, OCR_IGNORE_PUNCT,
    OCR_USE_CONFUSION_FOLD) as reward kwargs."""
    kw = {
        "ngram_max": options.get("ngram_max", 3),
        "case_sensitive": options.get("case_sensitive", True),
        "ignore_punct": options.get("ignore_punct", True),
        "confusion_fold": options.get("fold", True),
    }
    min_conf = options.get("min_conf", 0.0)
    n = 0
    for prompt, items in _cases(150, seed=99):
        lines = [t for t, c in items if t and (0.0 if c is None else c) >= min_conf]
        segs = [s for s in _ref_targets(prompt) if _ref_norm(s, True, kw["ignore_punct"])]
        if not segs:
            continue
        got = deepgen_score(lines, segs, **kw)[0]
        ref = _ref_reward(
            items,
            prompt,
            min_conf=min_conf,
            fold=kw["confusion_fold"],
            ngram_max=kw["ngram_max"],
            case_sensitive=kw["case_sensitive"],
            ignore_punct=kw["ignore_punct"],
        )
        assert abs(got - ref) <= 1e-12
        n += 1
    assert n > 100


def test_deepgen_rules_by_hand(fake_engine):
    # case-sensitive, and the confusion table folds lower-case letters only: "HELL0" vs "HELLO" stays 1 edit
    assert deepgen_score(["HELL0"], ["HELLO"])[0] == pytest.approx(0.8)
    assert multi_segment_score(["HELL0"], ["HELLO"])[0] == 1.0  # the extended variant folds O as well
    assert deepgen_score(["he11o"], ["hello"])[0] == 1.0  # 1 -> l on both sides
    assert deepgen_score(["hello"], ["HELLO"])[0] == 0.0  # case kept: 5 substitutions, capped at the length
    # ASCII-only punctuation rule: accented letters are dropped from both sides ("Café" -> "Caf")
    assert deepgen_score(["Café!"], ["Café"])[0] == 1.0
    assert deepgen_score(["Cafe"], ["Café"])[0] == pytest.approx(1 - 1 / 3)
    assert multi_segment_score(["Cafe"], ["Café"])[0] == pytest.approx(0.75)
    # n-grams of lines, but no word-runs inside a line: two segments on one line are not found apart
    assert deepgen_score(["HELLO", "WORLD"], ["HELLO WORLD"])[0] == 1.0
    assert deepgen_score(["CAT DOG"], ["CAT", "DOG"])[0] == 0.0  # "CATDOG" is 3 edits from each
    # length weighting: (5 * 1 + 2 * 0) / 7
    assert deepgen_score(["HELLO"], ["HELLO", "ZZ"]) == (pytest.approx(5 / 7), [1.0, 0.0])
    # straight double quotes only
    assert quoted_segments("“curly”") == ["curly"]
    assert ocr_module.deepgen_segments('“curly” and "straight"') == ["straight"]
    reward = OCRReward(mode="deepgen", min_confidence=0.2)
    im = Image.new("RGB", (4, 4))
    fake_engine.queue = [[("OPEN", 0.2), ("LATE", 0.19)], None]  # images without a target are never read
    out = reward([im] * 5, ['"OPEN" "LATE"', "no quotes", "“curly only”", '"!!!"', '"OPEN"'])
    assert out.scores[0].item() == pytest.approx(0.5)  # a line at the threshold is kept, one below is dropped
    assert out.valid.tolist() == [True, False, False, False, False]
    reasons = out.details["invalid_reason"]
    assert reasons[1:4] == ["no quoted text", "no quoted text", "no scorable character in the quoted text"]
    assert out.details["failures"] == 1 and out.details["mode"] == "deepgen"
    assert isinstance(out.scores, torch.Tensor)
    with pytest.raises(ValueError, match="'flowgrpo', 'deepgen' or 'multi'"):
        OCRReward(mode="paper")
