"""``mrgrpo sample RECIPE_OR_CKPT --prompt ... [--image ref.png] --out out.png``.

RECIPE_OR_CKPT is a recipe YAML (its policy, plus ``policy.checkpoint``) or a folder written by
``policy.save`` (a run's ``final/`` or ``checkpoints/step-N/policy``), whose ``policy.json``
names the policy to rebuild.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RECIPE_OR_CKPT", help="recipe YAML, or a folder written by policy.save")
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeatable: one image each)")
    p.add_argument("--image", action="append", default=[], help="reference image for editing (repeatable; used with every prompt)")
    p.add_argument("--out", default="sample.png", help="output PNG (several prompts: out-0.png, out-1.png, ...)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the recipe's eval.num_steps, else 50)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the recipe's eval.cfg_scale, else 4.0)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--negative-prompt", default="", help="negative prompt for CFG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override (a.b=c); for a saved folder only policy.kwargs.NAME=VALUE (e.g. policy.kwargs.mask_padding=false)")


def _build(args: argparse.Namespace):
    from mrgrpo.registry import POLICIES

    src = Path(args.source)
    defaults = {"steps": 50, "cfg": 4.0, "height": 512, "width": 512}
    if src.is_dir():
        meta = src / "policy.json"
        if not meta.exists():
            raise SystemExit(f"error: {src} has no policy.json; pass a recipe or a folder written by policy.save (e.g. a run's final/)")
        info = json.loads(meta.read_text())
        kwargs = dict(info.get("kwargs", {}))
        if args.set:
            from mrgrpo.config import RecipeError, apply_overrides

            try:
                over = apply_overrides({"policy": {"kwargs": {}}}, list(args.set))
            except RecipeError as exc:
                raise SystemExit(f"error: {exc}") from None
            if set(over) != {"policy"} or set(over["policy"]) != {"kwargs"}:
                raise SystemExit("error: with a saved policy folder, --set takes only policy.kwargs.NAME=VALUE")
            kwargs.update(over["policy"]["kwargs"])
        policy = POLICIES.build(info["name"], **kwargs)
        policy.load(str(src))
        for parent in (src.parent, src.parent.parent, src.parent.parent.parent):  # final/ or checkpoints/step-N/policy/
            if (parent / "config.yaml").exists():
                import yaml

                saved = yaml.safe_load((parent / "config.yaml").read_text()) or {}
                rl, ev = saved.get("rl", {}), saved.get("eval", {})
                # runs written before the `eval:` section kept these under rl.eval_*
                defaults.update(steps=ev.get("num_steps", rl.get("eval_num_steps", 50)), cfg=ev.get("cfg_scale", rl.get("eval_cfg_scale", 4.0)),
                                height=rl.get("height", 512), width=rl.get("width", 512))
                break
        return policy, defaults
    from mrgrpo.config import RecipeError, load_recipe
    from mrgrpo.trainer_base import build_policy

    try:
        cfg = load_recipe(src, args.set, check_files=False)
    except RecipeError as exc:
        raise SystemExit(f"error: {exc}") from None
    defaults.update(steps=cfg.eval.num_steps, cfg=cfg.eval.cfg_scale, height=cfg.rl.height, width=cfg.rl.width)
    return build_policy(cfg), defaults


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    policy, d = _build(args)
    if args.image and not getattr(policy, "supports_editing", False):
        raise SystemExit(f"error: the {type(policy).__name__} policy does not take reference images (--image)")
    refs = None
    if args.image:
        for path in args.image:
            if not Path(path).is_file():
                raise SystemExit(f"error: --image {path} does not exist")
        refs = [[Image.open(p).convert("RGB") for p in args.image] for _ in args.prompt]
    policy.eval()
    steps, cfg = args.steps or d["steps"], args.cfg if args.cfg is not None else d["cfg"]
    h, w = args.height or d["height"], args.width or d["width"]
    t = time.perf_counter()
    try:
        images = policy.generate(list(args.prompt), refs, num_steps=steps, cfg_scale=cfg, height=h, width=w,
                                 generator=torch.Generator().manual_seed(args.seed), negative_prompt=args.negative_prompt)
    except ValueError as exc:  # sizes, references: say what is wrong, not where in torch
        print(f"error: {exc}", file=__import__("sys").stderr)
        return 2
    elapsed = time.perf_counter() - t
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    for im, p in zip(images, paths):
        im.save(p)
        print(p)
    print(f"{len(images)} image(s) {w}x{h}, {steps} steps, cfg {cfg}: {elapsed:.2f} s")
    return 0
