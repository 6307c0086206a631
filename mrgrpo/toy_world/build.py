"""Files of a toy world: prompt files (training and held-out) and the synthetic SFT data set.

``write_prompts(dir)`` writes, for the categories of the run:

* ``train_<category>.txt``: every prompt of the category over the training colour-shape pairs (RL);
* ``heldout.jsonl`` / ``trained.jsonl``: evaluation prompts over the held-out (never trained) and the
  training pairs, one JSON a line in the GenEval metadata layout (``prompt``, ``tag`` = category,
  ``include`` = ``[{"class", "count", "color"}]``, plus ``relation`` for position prompts);
* ``world.json``: the split.

``write_sft_data(dir, n)`` renders ``n`` ideal images of random training-pair scenes and writes
``t2i.jsonl`` (``{"image_path", "txt"}``, the format the SFT trainer reads).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mrgrpo.toy_world.grammar import COUNT_WORDS, RELATIONS, Obj, Scene, prompt_of, sample_scene, split_pairs
from mrgrpo.toy_world.render import render_scene

#: categories of the CPU run (position and word are in the grammar and graders, not in the short run)
RUN_CATEGORIES: tuple[str, ...] = ("single", "count")


def scenes_of(
    category: str, pairs: list[Obj], partners: list[Obj] | None = None, counts: tuple[int, ...] = (2, 3)
) -> list[Scene]:
    """Every scene of ``category`` whose (first) object is in ``pairs``."""
    if category == "single":
        return [Scene("single", (o,)) for o in pairs]
    if category == "count":
        return [Scene("count", (o,), count=n) for o in pairs for n in counts]
    if category == "position":
        return [
            Scene("position", (a, b), relation=r)
            for a in pairs
            for b in (partners or pairs)
            for r in RELATIONS
            if a.color != b.color and a.shape != b.shape
        ]
    raise ValueError(f"category {category!r} has no enumerable prompt set here")


def geneval_record(scene: Scene) -> dict:
    """A GenEval-metadata-style record of a scene."""
    rec = {"prompt": prompt_of(scene), "tag": scene.category}
    if scene.category in ("single", "count"):
        o = scene.objects[0]
        rec["include"] = [{"class": o.shape, "count": scene.count, "color": o.color}]
    elif scene.category == "position":
        (a, b), rel = scene.objects, scene.relation
        rec["include"] = [
            {"class": a.shape, "count": 1, "color": a.color},
            {"class": b.shape, "count": 1, "color": b.color, "position": [rel, 0]},
        ]
    elif scene.category == "word":
        rec["ocr_text"] = scene.word
    return rec


def write_prompts(
    out_dir: str | Path, categories: tuple[str, ...] = RUN_CATEGORIES, n_heldout: int = 6, split_seed: int = 0
) -> Path:
    """Write the prompt files of a world (see the module docstring); returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held = split_pairs(n_heldout, split_seed)
    for cat in categories:
        (out / f"train_{cat}.txt").write_text("\n".join(prompt_of(s) for s in scenes_of(cat, train)) + "\n")
    for name, pairs in (("heldout", held), ("trained", train)):
        lines = [json.dumps(geneval_record(s)) for cat in categories for s in scenes_of(cat, pairs, partners=train)]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (out / "world.json").write_text(
        json.dumps(
            {
                "categories": list(categories),
                "train_pairs": [[o.color, o.shape] for o in train],
                "heldout_pairs": [[o.color, o.shape] for o in held],
                "count_words": COUNT_WORDS,
            },
            indent=1,
        )
    )
    return out


def write_sft_data(
    out_dir: str | Path,
    n: int = 4000,
    size: int = 32,
    seed: int = 0,
    categories: tuple[str, ...] = RUN_CATEGORIES,
    n_heldout: int = 6,
    split_seed: int = 0,
) -> Path:
    """Render ``n`` training-pair scenes (categories in turn) and write ``t2i.jsonl``; returns its path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    train, _ = split_pairs(n_heldout, split_seed)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        scene = sample_scene(rng, categories[i % len(categories)], train)
        name = f"images/{i:06d}.png"
        render_scene(scene, size, rng).save(out / name)
        lines.append(json.dumps({"image_path": name, "txt": prompt_of(scene)}))
    path = out / "t2i.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
