"""``mrgrpo data synth``: a small synthetic text-to-image + editing data set drawn with PIL.

Text-to-image images are coloured shapes (square, circle, triangle in named colours on a
plain background, e.g. ``a red circle on a white background``) and short rendered words
(``the word "cat" in black on white``); editing triplets change a shape's colour, the
background, or the shape (``make the square blue``). Some images are landscape or portrait
so the size buckets of :mod:`mrgrpo.sft_data` are exercised. Everything is a function of the
seed. Layout of ``--out DIR``::

    images/              PNG files
    t2i.jsonl            {"image_path", "txt"}                         (format: t2i)
    caption.json         [{"image", "annotation": {"caption"}}]        (format: caption, same images)
    edit.jsonl           {"input_image": [..], "output_image", "instruction"}  (format: edit)
    shards/synth-000000.tar   WebDataset shard of the t2i samples, png + txt (format: webdataset)
    prompts.txt          RL prompts, one a line
    manifest.json        what is where, counts, and a recipe snippet

This module must import quickly (the CLI builds its parser from :func:`add_arguments`), so the
heavier imports live inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
BACKGROUNDS: tuple[str, ...] = ("white", "black", "yellow", "blue")
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "tree", "flow", "open", "hi", "map", "red", "box", "art", "sky")
# (width, height) factors of the base size: mostly square, some landscape / portrait
ASPECTS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.0, 1.0), (1.5, 1.0), (1.0, 1.5))


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(8, px))
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_shape(shape: str, color: str, background: str, size: tuple[int, int], rng: random.Random):
    """A ``size = (W, H)`` RGB image of one ``shape`` in ``color`` on ``background``, placed at random."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), COLORS[background])
    d = ImageDraw.Draw(img)
    side = int(min(w, h) * rng.uniform(0.45, 0.7))
    x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
    box = (x0, y0, x0 + side, y0 + side)
    if shape == "square":
        d.rectangle(box, fill=COLORS[color])
    elif shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "triangle":
        d.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=COLORS[color])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def draw_word(word: str, color: str, background: str, size: tuple[int, int]):
    """A ``size = (W, H)`` RGB image with ``word`` written large and centred."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), COLORS[background])
    d = ImageDraw.Draw(img)
    px = int(min(h * 0.6, w * 1.4 / max(1, len(word))))
    font = _font(px)
    left, top, right, bottom = d.textbbox((0, 0), word, font=font)
    d.text(((w - (right - left)) / 2 - left, (h - (bottom - top)) / 2 - top), word, fill=COLORS[color], font=font)
    return img


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick_other(rng: random.Random, options: tuple[str, ...] | list[str], *avoid: str) -> str:
    return rng.choice([o for o in options if o not in avoid])


def synthesize(out_dir: str | Path, n: int = 200, size: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write the synthetic data set to ``out_dir``.

    Args:
        out_dir: output folder (created).
        n: text-to-image images (3/4 shapes, 1/4 words); ``max(1, n // 2)`` editing triplets.
        size: base side in pixels (landscape / portrait images are 1.5x on one side).
        seed: everything drawn is a function of it.

    Returns:
        Paths by name: ``t2i``, ``caption``, ``edit``, ``webdataset``, ``prompts``, ``manifest``, ``images``.
    """
    import io

    import webdataset as wds

    if n < 1 or size < 8:
        raise ValueError(f"synthesize: need n >= 1 and size >= 8, got n={n}, size={size}")
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    rng = random.Random(seed)
    shape_colors = [c for c in COLORS if c != "white"]

    def dims() -> tuple[int, int]:
        fw, fh = rng.choice(ASPECTS)
        return round(size * fw), round(size * fh)

    t2i, captions = [], []
    shard_path = out / "shards" / "synth-000000.tar"
    with wds.TarWriter(str(shard_path)) as sink:
        for i in range(n):
            bg = rng.choice(BACKGROUNDS)
            if i % 4 == 3:
                word, color = rng.choice(WORDS), _pick_other(rng, list(COLORS), bg)
                img = draw_word(word, color, bg, dims())
                text = f'the word "{word}" in {color} on {bg}'
            else:
                shape, color = rng.choice(SHAPES), _pick_other(rng, shape_colors, bg)
                img = draw_shape(shape, color, bg, dims(), rng)
                text = f"{_article(color)} {color} {shape} on a {bg} background"
            rel = f"images/t2i_{i:05d}.png"
            img.save(out / rel)
            t2i.append({"image_path": rel, "txt": text})
            captions.append({"image": rel, "annotation": {"caption": text}})
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            sink.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "txt": text})

    edits = []
    for i in range(max(1, n // 2)):
        bg, shape = rng.choice(BACKGROUNDS), rng.choice(SHAPES)
        color = _pick_other(rng, shape_colors, bg)
        wh = dims()
        place = rng.random()  # the same seed draws the same box for input and output
        before = draw_shape(shape, color, bg, wh, random.Random(place))
        kind = i % 3
        if kind == 0:
            new = _pick_other(rng, shape_colors, bg, color)
            after, instruction = draw_shape(shape, new, bg, wh, random.Random(place)), f"make the {shape} {new}"
        elif kind == 1:
            new = _pick_other(rng, BACKGROUNDS, bg, color)
            after, instruction = draw_shape(shape, color, new, wh, random.Random(place)), f"make the background {new}"
        else:
            new = _pick_other(rng, SHAPES, shape)
            after, instruction = draw_shape(new, color, bg, wh, random.Random(place)), f"turn the {shape} into a {new}"
        rel_in, rel_out = f"images/edit_{i:05d}_in.png", f"images/edit_{i:05d}_out.png"
        before.save(out / rel_in)
        after.save(out / rel_out)
        edits.append({"input_image": [rel_in], "output_image": rel_out, "instruction": instruction})

    paths = {
        "t2i": out / "t2i.jsonl",
        "caption": out / "caption.json",
        "edit": out / "edit.jsonl",
        "webdataset": shard_path,
        "prompts": out / "prompts.txt",
        "manifest": out / "manifest.json",
        "images": img_dir,
    }
    paths["t2i"].write_text("".join(json.dumps(r) + "\n" for r in t2i))
    paths["caption"].write_text(json.dumps(captions, indent=1))
    paths["edit"].write_text("".join(json.dumps(r) + "\n" for r in edits))
    prompts = sorted({r["txt"] for r in t2i})
    rng.shuffle(prompts)
    paths["prompts"].write_text("\n".join(prompts[:32]) + "\n")
    manifest: dict[str, Any] = {
        "name": "mrgrpo synthetic shapes and words",
        "description": (
            "Coloured shapes and rendered words (text-to-image) and shape edits (editing), drawn with PIL for smoke "
            "runs and tests."
        ),
        "seed": seed,
        "size": size,
        "counts": {"t2i": len(t2i), "edit": len(edits), "prompts": min(32, len(prompts))},
        "files": {k: str(v.relative_to(out)) for k, v in paths.items()},
        "formats": {
            "t2i.jsonl": "t2i",
            "caption.json": "caption (caption_key: caption)",
            "edit.jsonl": "edit",
            "shards/synth-000000.tar": "webdataset (png + txt)",
            "prompts.txt": "RL prompt file (.txt)",
        },
        "recipe": {
            "data": {
                "sft_sources": [
                    {"name": "synth_t2i", "path": str(paths["t2i"]), "format": "t2i"},
                    {"name": "synth_edit", "path": str(paths["edit"]), "format": "edit"},
                ]
            },
            "sft": {"pixel_budget": size, "t2i_edit_ratio": [3, 1]},
        },
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mrgrpo data synth``."""
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=200, help="text-to-image images (n // 2 editing triplets)")
    parser.add_argument("--size", type=int, default=64, help="base image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


#: largest ``--size``: images are up to 1.5x this on one side, drawn in memory one at a time
MAX_SIZE = 4096


def check_args(args: argparse.Namespace) -> None:
    """Raise ``UsageError`` for ``--out``, ``--n``, ``--size``, ``--seed`` values that cannot work, before any work."""
    from mrgrpo.errors import UsageError

    if args.n < 1:
        raise UsageError(f"--n {args.n}: the number of text-to-image images must be >= 1. Fix: e.g. --n 200.")
    if not 8 <= args.size <= MAX_SIZE:
        raise UsageError(
            f"--size {args.size}: the image side must be between 8 and {MAX_SIZE} pixels. Fix: e.g. --size 64."
        )
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: seeds are >= 0. Fix: e.g. --seed 0.")
    out = Path(args.out)
    if not str(args.out).strip():
        raise UsageError("--out is empty. Fix: give the folder to write, e.g. --out data/synth.")
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"--out {args.out} is a file; it must be a folder (created when missing). Fix: choose another path."
        )
    probe = out.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(
            f"--out {args.out}: {probe} is a file, so the folder cannot be created. Fix: choose another path."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {args.out}: {probe} is not writable. Fix: choose a folder you can write to.")
    written = ("t2i.jsonl", "caption.json", "edit.jsonl", "prompts.txt", "manifest.json")
    for name, want_dir in (("images", True), ("shards", True), *((f, False) for f in written)):
        p = out / name
        if p.exists() and p.is_dir() != want_dir:
            have, want = ("file", "folder") if want_dir else ("folder", "file")
            raise UsageError(
                f"--out {args.out}: {p} is a {have} where the data set writes a {want}. "
                "Fix: remove it or choose another --out."
            )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mrgrpo data synth``."""
    check_args(args)
    paths = synthesize(args.out, n=args.n, size=args.size, seed=args.seed)
    manifest = json.loads(paths["manifest"].read_text())
    c = manifest["counts"]
    print(
        f"wrote {c['t2i']} text-to-image images, {c['edit']} editing triplets and {c['prompts']} prompts to {args.out}"
    )
    for k in ("t2i", "caption", "edit", "webdataset", "prompts", "manifest"):
        print(f"  {k:10s} {paths[k]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrgrpo data synth", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
