"""``mrgrpo sample RECIPE_OR_CKPT --prompt ... [--image ref.png] --out out.png``.

RECIPE_OR_CKPT is a recipe YAML (its policy, plus ``policy.checkpoint``) or a folder written by
``policy.save`` (a run's ``final/`` or ``checkpoints/step-N/policy``), whose ``policy.json``
names the policy to rebuild.

Arguments are checked before the policy is built (seconds to minutes with a real model): every
mistake is a :class:`~mrgrpo.errors.UsageError` (or a ``RecipeError`` / ``CheckpointError``)
naming the option or file and the fix.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from mrgrpo.errors import CheckpointError, UsageError

#: output suffixes PIL writes without extra options
_OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RECIPE_OR_CKPT", help="recipe YAML, or a folder written by policy.save")
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeatable: one image each)")
    p.add_argument(
        "--image", action="append", default=[], help="reference image for editing (repeatable; used with every prompt)"
    )
    p.add_argument("--out", default="sample.png", help="output PNG (several prompts: out-0.png, out-1.png, ...)")
    p.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: the recipe's eval.num_steps, else 50)"
    )
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the recipe's eval.cfg_scale, else 4.0)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--negative-prompt", default="", help="negative prompt for CFG")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="noise seed (drawn on the CPU, so a seed gives the same starting noise on every device)",
    )
    p.add_argument("--device", default=None, help="torch device to sample on (default: cuda when available, else cpu)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "recipe override (a.b=c); for a saved folder only policy.kwargs.NAME=VALUE (e.g. "
            "policy.kwargs.mask_padding=false)"
        ),
    )


def check_args(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for options that cannot work, before anything is built."""
    if args.steps is not None and args.steps < 1:
        raise UsageError(
            f"--steps {args.steps}: the number of denoising steps must be >= 1. Fix: e.g. --steps 50, "
            "or leave it out for the recipe's eval.num_steps."
        )
    if args.cfg is not None and (not math.isfinite(args.cfg) or args.cfg < 0):
        raise UsageError(
            f"--cfg {args.cfg}: the CFG scale must be a finite number >= 0. Fix: e.g. --cfg 4 (<= 1 disables CFG)."
        )
    for name in ("height", "width"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UsageError(
                f"--{name} {v}: image sizes are positive pixel counts (multiples of 16). Fix: e.g. --{name} 512."
            )
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: seeds are >= 0. Fix: e.g. --seed 0.")
    for i, prompt in enumerate(args.prompt):
        if not prompt.strip():
            raise UsageError(
                f'--prompt number {i + 1} is empty. Fix: give the text to draw, e.g. --prompt "a red cube".'
            )
    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", "\\")):
        raise UsageError(
            f"--out {args.out} is a folder; it must name an image file. Fix: e.g. --out {out / 'sample.png'}."
        )
    if out.suffix.lower() not in _OUT_SUFFIXES:
        raise UsageError(
            f"--out {args.out}: unknown image type {out.suffix or '(no suffix)'!r}. Fix: end it in "
            f"{' / '.join(_OUT_SUFFIXES)}, e.g. --out {out.with_suffix('.png')}."
        )
    parent = next((q for q in out.absolute().parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(
            f"--out {args.out}: {parent} is a file, so the folder cannot be created. Fix: choose another path."
        )
    for path in args.image:
        check_image(path)


def check_image(path: str) -> None:
    """Raise :class:`UsageError` unless ``path`` is a readable image file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise UsageError(f"--image {path} does not exist. Fix: give the path of a reference image (PNG, JPEG, ...).")
    if p.is_dir():
        raise UsageError(f"--image {path} is a folder. Fix: give one image file per --image.")
    try:
        with Image.open(p) as im:
            im.verify()
    except PermissionError:
        raise UsageError(f"--image {path} cannot be read: permission denied. Fix: `chmod u+r {path}`.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise UsageError(
            f"--image {path} is not a readable image ({type(exc).__name__}: {str(exc)[:120]}). "
            "Fix: give a PNG/JPEG/WebP image."
        ) from None


def _policy_info(src: Path) -> dict:
    """``policy.json`` of a saved policy folder (:class:`CheckpointError` when missing or damaged)."""
    meta = src / "policy.json"
    fix = "pass a recipe, or a folder written by policy.save (a run's final/ or checkpoints/step-N/policy)"
    if not meta.exists():
        if (src / "policy" / "policy.json").exists():
            fix = f"pass {src / 'policy'} (a checkpoint keeps the policy in its policy/ folder)"
        raise UsageError(f"{src} has no policy.json. Fix: {fix}.")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"the file {meta} is damaged ({type(exc).__name__}: {str(exc)[:120]}). Fix: {fix}; "
            "a policy.json is written by policy.save."
        ) from None
    if not (isinstance(info, dict) and isinstance(info.get("name"), str) and isinstance(info.get("kwargs", {}), dict)):
        raise CheckpointError(f'the file {meta} is damaged: it needs {{"name": str, "kwargs": {{...}}}}. Fix: {fix}.')
    return info


def _build(args: argparse.Namespace):
    from mrgrpo.registry import POLICIES

    src = Path(args.source)
    defaults = {"steps": 50, "cfg": 4.0, "height": 512, "width": 512}
    if src.is_dir():
        info = _policy_info(src)
        kwargs = dict(info.get("kwargs", {}))
        if args.set:
            from mrgrpo.config import apply_overrides

            over = apply_overrides({"policy": {"kwargs": {}}}, list(args.set))
            if set(over) != {"policy"} or set(over["policy"]) != {"kwargs"}:
                raise UsageError("with a saved policy folder, --set takes only policy.kwargs.NAME=VALUE")
            kwargs.update(over["policy"]["kwargs"])
        from mrgrpo.preflight import check_factory_kwargs

        factory = POLICIES.get(info["name"])
        problems = check_factory_kwargs(
            factory, kwargs, "policy.kwargs", f"policy {info['name']!r}", check_required=False
        )
        if problems:
            raise UsageError(f"{src / 'policy.json'} with --set: " + " ".join(problems))
        policy = factory(**kwargs)
        from mrgrpo.checkpoint import load_part

        load_part(src, "saved policy", lambda: policy.load(str(src)))
        for parent in (src.parent, src.parent.parent, src.parent.parent.parent):  # final/ or checkpoints/step-N/policy/
            if (parent / "config.yaml").exists():
                import yaml

                saved = yaml.safe_load((parent / "config.yaml").read_text()) or {}
                rl, ev = saved.get("rl", {}), saved.get("eval", {})
                # runs written before the `eval:` section kept these under rl.eval_*
                defaults.update(
                    steps=ev.get("num_steps", rl.get("eval_num_steps", 50)),
                    cfg=ev.get("cfg_scale", rl.get("eval_cfg_scale", 4.0)),
                    height=rl.get("height", 512),
                    width=rl.get("width", 512),
                )
                break
        return policy, defaults
    from mrgrpo.config import load_recipe
    from mrgrpo.preflight import check_local_paths, check_registry
    from mrgrpo.trainer_base import build_policy

    cfg = load_recipe(src, args.set, check_files=False)
    problems = [p for p in check_registry(cfg) + check_local_paths(cfg) if p.startswith("field `policy.")]
    if problems:
        from mrgrpo.config import RecipeError

        raise RecipeError(f"{src}: " + " ".join(problems))
    defaults.update(steps=cfg.eval.num_steps, cfg=cfg.eval.cfg_scale, height=cfg.rl.height, width=cfg.rl.width)
    return build_policy(cfg), defaults


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    check_args(args)
    policy, d = _build(args)
    if args.image and not getattr(policy, "supports_editing", False):
        raise UsageError(
            f"the {type(policy).__name__} policy does not take reference images (--image). "
            "Fix: drop --image, or use an editing policy (deepgen)."
        )
    refs = None
    if args.image:
        refs = [[Image.open(p).convert("RGB") for p in args.image] for _ in args.prompt]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        policy.to(torch.device(device))
    except (RuntimeError, AssertionError) as exc:  # unknown device string, CUDA not compiled/available
        raise UsageError(f"--device {device}: {exc}. Fix: pass --device cpu, or cuda[:N] on a GPU machine.") from None
    policy.eval()
    steps = args.steps if args.steps is not None else d["steps"]
    cfg = args.cfg if args.cfg is not None else d["cfg"]
    h = args.height if args.height is not None else d["height"]
    w = args.width if args.width is not None else d["width"]
    prompts, n_cut = policy.truncate_prompts(list(args.prompt))
    if n_cut:
        print(
            f"warning: {n_cut} prompt(s) longer than the policy's limit of {policy.max_prompt_tokens} tokens were "
            "truncated",
            file=sys.stderr,
        )
    t = time.perf_counter()
    try:
        images = policy.generate(
            prompts,
            refs,
            num_steps=steps,
            cfg_scale=cfg,
            height=h,
            width=w,
            generator=torch.Generator().manual_seed(args.seed),
            negative_prompt=args.negative_prompt,
        )
    except ValueError as exc:  # sizes, references: say what is wrong, not where in torch
        print(f"error: {exc}", file=sys.stderr)
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
