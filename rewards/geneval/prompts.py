"""GenEval-format training prompts, disjoint from GenEval's 553 evaluation prompts.

Same six tags and record format as GenEval's evaluation metadata (``tag``, ``include``,
``exclude``, ``prompt``): single object, two objects, counting (2-4, with the ``count + 1``
exclusion), one coloured object, relative position, two coloured objects. No colour is put on
"person", as in GenEval. Written for this project; it generates records, it does not copy any.

``python -m mrgrpo.rewards.geneval.prompts OUT.jsonl [--per-tag 200] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

from mrgrpo.rewards.geneval.grader import COLORS

POSITIONS = ["left of", "right of", "above", "below"]
NUMBERS = {2: "two", 3: "three", 4: "four"}
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _plural(word: str) -> str:
    return f"{word}es" if word.endswith("s") else f"{word}s"


def make_record(tag: str, rng: random.Random, classes: list[str]) -> dict[str, Any]:
    """One random GenEval-format record of ``tag``."""
    colourable = [c for c in classes if c != "person"]
    if tag == "single_object":
        c = rng.choice(classes)
        return {"tag": tag, "include": [{"class": c, "count": 1}], "prompt": f"a photo of {_a(c)}"}
    if tag == "two_object":
        a, b = rng.sample(classes, 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {_a(a)} and {_a(b)}",
        }
    if tag == "counting":
        c, n = rng.choice(classes), rng.randint(2, 4)
        return {
            "tag": tag,
            "include": [{"class": c, "count": n}],
            "exclude": [{"class": c, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {_plural(c)}",
        }
    if tag == "colors":
        c, col = rng.choice(colourable), rng.choice(COLORS)
        return {"tag": tag, "include": [{"class": c, "count": 1, "color": col}], "prompt": f"a photo of {_a(col)} {c}"}
    if tag == "position":
        a, b = rng.sample(classes, 2)
        rel = rng.choice(POSITIONS)
        return {
            "tag": tag,
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {_a(a)} {rel} {_a(b)}",
        }
    if tag == "color_attr":
        a, b = rng.sample(colourable, 2)
        ca, cb = rng.sample(COLORS, 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {_a(ca)} {a} and {_a(cb)} {b}",
        }
    raise ValueError(f"geneval: unknown tag {tag!r}; one of {TAGS}")


def make_prompts(per_tag: int = 200, seed: int = 0, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """``per_tag`` distinct records of each tag (fewer for single_object: 80 classes minus excluded), none whose
    prompt is in ``exclude`` (default: GenEval's evaluation prompts)."""
    from mrgrpo.rewards.geneval.reward import load_classnames, load_metadata

    classes = load_classnames()
    banned = set(exclude) if exclude is not None else {r["prompt"] for r in load_metadata()}
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for tag in TAGS:
        got, tries = 0, 0
        while got < per_tag and tries < 50 * per_tag:
            tries += 1
            rec = make_record(tag, rng, classes)
            if rec["prompt"] in banned or rec["prompt"] in seen:
                continue
            seen.add(rec["prompt"])
            out.append(rec)
            got += 1
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--per-tag", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with open(args.out, "w", encoding="utf-8") as f:
        for rec in make_prompts(args.per_tag, args.seed):
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
