"""The toy world's prompt grammar, its parser and the held-out split.

Categories (GenEval-style; a prompt is right only when every clause is):

* ``single``:   ``a red circle``                            clauses colour, shape
* ``count``:    ``two red circles`` / ``three ...``          clauses count, colour, shape
* ``position``: ``a red circle left of a blue square`` (or ``above``)   clauses colour, shape, position
* ``word``:     ``the word "cat"``                           clause word (OCR)

Colour-shape pairs are split into training pairs and held-out pairs (:func:`split_pairs`): prompts
of the SFT data and of RL only use training pairs; held-out prompts use at least one held-out pair.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

#: palette (RGB 0-255): hues far apart so a nearest-colour grader is unambiguous
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "orange": (240, 120, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
RELATIONS: tuple[str, ...] = ("left of", "above")
WORDS: tuple[str, ...] = ("cat", "sun", "box", "red", "map", "dog")
CATEGORIES: tuple[str, ...] = ("single", "count", "position", "word")
CLAUSES: dict[str, tuple[str, ...]] = {
    "single": ("color", "shape"),
    "count": ("count", "color", "shape"),
    "position": ("color", "shape", "position"),
    "word": ("word",),
}


@dataclass(frozen=True)
class Obj:
    """One kind of object: a colour and a shape."""

    color: str
    shape: str


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for.

    Attributes:
        category: one of :data:`CATEGORIES`.
        objects: ``single``/``count``: one object kind; ``position``: (A, B) for "A <relation> B"; ``word``: ().
        count: how many of ``objects[0]`` (``count``: 2 or 3; else 1 per object).
        relation: ``"left of"`` or ``"above"`` (``position`` only).
        word: the rendered word (``word`` only).
    """

    category: str
    objects: tuple[Obj, ...] = ()
    count: int = 1
    relation: str | None = None
    word: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def clauses(self) -> tuple[str, ...]:
        return CLAUSES[self.category]


def _plural(shape: str) -> str:
    return shape + "s"


def prompt_of(scene: Scene) -> str:
    """The prompt text of a scene (inverse of :func:`parse_prompt`)."""
    if scene.category == "single":
        o = scene.objects[0]
        return f"a {o.color} {o.shape}"
    if scene.category == "count":
        o = scene.objects[0]
        return f"{COUNT_WORDS[scene.count]} {o.color} {_plural(o.shape) if scene.count > 1 else o.shape}"
    if scene.category == "position":
        a, b = scene.objects
        return f"a {a.color} {a.shape} {scene.relation} a {b.color} {b.shape}"
    if scene.category == "word":
        return f'the word "{scene.word}"'
    raise ValueError(f"unknown category {scene.category!r}; use one of {CATEGORIES}")


_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_N = "|".join(COUNT_WORDS.values())
_OBJ = rf"(?:a|an)\s+({_C})\s+({_S})"
_PATTERNS = [
    ("position", re.compile(rf"^{_OBJ}\s+(left of|above)\s+{_OBJ}$")),
    ("count", re.compile(rf"^({_N})\s+({_C})\s+({_S})s?$")),
    ("single", re.compile(rf"^{_OBJ}$")),
    ("word", re.compile(r'^the word\s+"([^"]+)"$')),
]


def parse_prompt(prompt: str) -> Scene | None:
    """The :class:`Scene` a toy-world prompt asks for, or None for text outside the grammar.

    Case and surrounding whitespace/punctuation are ignored. ``"one red circle"`` parses as a
    ``single`` scene (count 1 is the single-object case).
    """
    text = re.sub(r"\s+", " ", (prompt or "").strip().rstrip(".").lower())
    for category, pattern in _PATTERNS:
        m = pattern.match(text)
        if not m:
            continue
        g = m.groups()
        if category == "position":
            return Scene("position", (Obj(g[0], g[1]), Obj(g[3], g[4])), relation=g[2])
        if category == "count":
            n = {v: k for k, v in COUNT_WORDS.items()}[g[0]]
            return Scene("count" if n > 1 else "single", (Obj(g[1], g[2]),), count=n)
        if category == "single":
            return Scene("single", (Obj(g[0], g[1]),))
        return Scene("word", word=g[0])
    return None


def all_pairs() -> list[Obj]:
    return [Obj(c, s) for c in COLORS for s in SHAPES]


def split_pairs(n_heldout: int = 6, seed: int = 0) -> tuple[list[Obj], list[Obj]]:
    """``(train_pairs, heldout_pairs)``: a Latin-square-like hold-out so every colour and every
    shape stays in training with other partners (held-out pairs are new *combinations*)."""
    colors = list(COLORS)
    rng = random.Random(seed)
    rng.shuffle(colors)
    held = [Obj(colors[i % len(colors)], SHAPES[i % len(SHAPES)]) for i in range(n_heldout)]
    if len(set(held)) != n_heldout or n_heldout > len(colors):
        raise ValueError(f"n_heldout must be at most {len(colors)}, got {n_heldout}")
    train = [o for o in all_pairs() if o not in held]
    return train, held


def sample_scene(
    rng: random.Random,
    category: str,
    pairs: list[Obj],
    *,
    counts: tuple[int, ...] = (2, 3),
    partner_pairs: list[Obj] | None = None,
) -> Scene:
    """A random scene of ``category`` whose first object comes from ``pairs`` (the partner of a
    ``position`` scene from ``partner_pairs``, default ``pairs``), both objects of different colours."""
    if category == "single":
        return Scene("single", (rng.choice(pairs),))
    if category == "count":
        return Scene("count", (rng.choice(pairs),), count=rng.choice(counts))
    if category == "position":
        a = rng.choice(pairs)
        others = [o for o in (partner_pairs or pairs) if o.color != a.color and o.shape != a.shape]
        return Scene("position", (a, rng.choice(others)), relation=rng.choice(RELATIONS))
    if category == "word":
        return Scene("word", word=rng.choice(WORDS))
    raise ValueError(f"unknown category {category!r}; use one of {CATEGORIES}")
