"""Cross-field checks of a recipe that the schema alone cannot express (run by ``load_recipe``).

Every problem names the field, the bad value and the fix; all of them are reported together in
one :class:`~mrgrpo.config.RecipeError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mrgrpo.recipe_schema import RecipeError, RunConfig
from mrgrpo.sde_window import SDEWindow


def check_recipe(cfg: RunConfig, *, check_files: bool = True, source: str = "<recipe>") -> None:
    """Cross-field checks that a schema alone cannot express; raises :class:`RecipeError`."""
    problems: list[str] = []
    rl, train = cfg.rl, cfg.train

    def bad(field: str, value: Any, why: str, fix: str) -> None:
        problems.append(f"  - field `{field}`: {value!r} {why}. Fix: {fix}.")

    def missing(field: str, value: str) -> Path | None:
        """The resolved path when it does not exist (None when it does, or when it cannot be expanded)."""
        try:
            p = cfg.resolve_path(value, field)
        except RecipeError as exc:
            problems.append(f"  - {exc}")
            return None
        return None if p.exists() else p

    if not cfg.output_dir.strip():
        bad(
            "output_dir",
            cfg.output_dir,
            "is empty (the run would write into the working directory)",
            "name a run folder, e.g. outputs/my_run",
        )
    if cfg.stage == "rl":
        if not cfg.data.sources:
            bad(
                "data.sources",
                [],
                "is empty: an RL run needs prompts",
                "add at least one prompt source with its reward mixture",
            )
        if not cfg.rewards:
            bad(
                "rewards",
                {},
                "is empty: an RL run needs rewards",
                "define the rewards the mixtures name (e.g. rewards: {ocr: {}})",
            )
        if train.images_per_step % rl.group_size:
            bad(
                "train.images_per_step",
                train.images_per_step,
                f"is not divisible by rl.group_size={rl.group_size}",
                f"use a multiple of {rl.group_size} (e.g. "
                f"{max(1, train.images_per_step // rl.group_size) * rl.group_size})",
            )
        for h_name in ("height", "width"):
            v = getattr(rl, h_name)
            if v % 16:
                bad(f"rl.{h_name}", v, "is not a multiple of 16", f"use {((v + 15) // 16) * 16}")
        for problem in rl.sde_window.problems(rl.num_steps) if rl.sde_window is not None else []:
            bad(*problem)
        _check_rollout_options(cfg, bad)
        upr = train.updates_per_rollout
        if isinstance(upr, int) and cfg.prompts_per_step % upr:
            bad(
                "train.updates_per_rollout",
                upr,
                f"does not divide the {cfg.prompts_per_step} prompts (groups) of a step",
                f"use a divisor of {cfg.prompts_per_step} (groups are kept whole), or per_timestep",
            )
        if (
            isinstance(rl.clip_range, tuple)
            and min(rl.clip_range) < 0
            or not isinstance(rl.clip_range, tuple)
            and rl.clip_range < 0
        ):
            bad("rl.clip_range", rl.clip_range, "is negative", "use a small positive value such as 1e-4")
    for i, src in enumerate(cfg.data.sources + cfg.eval.sources):
        section = "data.sources" if i < len(cfg.data.sources) else "eval.sources"
        j = i if i < len(cfg.data.sources) else i - len(cfg.data.sources)
        field = f"{section}.{j}"
        unknown = sorted(set(src.rewards) - set(cfg.rewards))
        if unknown:
            bad(
                f"{field}.rewards",
                unknown,
                f"names reward(s) the run does not define (defined: {sorted(cfg.rewards)})",
                "add them under `rewards:` or remove them from the mixture",
            )
        if not src.rewards and cfg.stage == "rl":
            bad(
                f"{field}.rewards",
                {},
                "is empty: its prompts would get no reward",
                f"give the mixture, e.g. {{{next(iter(sorted(cfg.rewards)), 'ocr')}: 1.0}}",
            )
        if src.rewards and all(w == 0 for w in src.rewards.values()):
            bad(f"{field}.rewards", src.rewards, "has only zero weights", "give at least one reward a positive weight")
        if any(w < 0 for w in src.rewards.values()):
            bad(f"{field}.rewards", src.rewards, "has a negative weight", "use weights >= 0")
        if check_files and src.required and (gone := missing(f"{field}.path", src.path)) is not None:
            bad(
                f"{field}.path",
                src.path,
                f"does not exist (looked at {gone})",
                "point it at an existing prompt file (relative paths are taken from the recipe's folder) or set "
                "`required: false`",
            )
    if cfg.stage == "rl" and cfg.data.sources and all(s.weight == 0 for s in cfg.data.sources):
        bad(
            "data.sources.*.weight",
            [s.weight for s in cfg.data.sources],
            "are all zero",
            "give at least one source a positive weight",
        )
    if cfg.stage in ("pretrain", "sft"):
        if not cfg.data.sft_sources:
            bad("data.sft_sources", [], f"is empty: the {cfg.stage} stage trains on images", "add image sources")
        if cfg.sft.t2i_edit_ratio[0] < 0 or cfg.sft.t2i_edit_ratio[1] < 0 or sum(cfg.sft.t2i_edit_ratio) == 0:
            bad(
                "sft.t2i_edit_ratio",
                list(cfg.sft.t2i_edit_ratio),
                "must be two non-negative numbers, not both 0",
                "e.g. [3, 1]",
            )
    if cfg.stage == "rl" and rl.sft_aux_coef > 0 and not cfg.data.sft_sources:
        bad(
            "rl.sft_aux_coef",
            rl.sft_aux_coef,
            "asks for the auxiliary SFT loss but data.sft_sources is empty",
            "add data.sft_sources, or set rl.sft_aux_coef: 0",
        )
    for i, sft_src in enumerate(cfg.data.sft_sources):
        if (
            check_files
            and sft_src.required
            and sft_src.format != "webdataset"
            and (gone := missing(f"data.sft_sources.{i}.path", sft_src.path))
        ):
            bad(
                f"data.sft_sources.{i}.path",
                sft_src.path,
                f"does not exist (looked at {gone})",
                "point it at your copy of the data set or set `required: false`",
            )
    if train.micro_batch_size > train.images_per_step:
        bad(
            "train.micro_batch_size",
            train.micro_batch_size,
            f"exceeds train.images_per_step={train.images_per_step}",
            f"use at most {train.images_per_step}",
        )
    else:
        _check_layout(cfg, bad)
    if cfg.stage == "rl" and sde_trainable_steps(rl.num_steps, rl.sde_window) == 0:
        bad(
            "rl.sde_window",
            rl.sde_window.compact() if rl.sde_window is not None else None,
            f"leaves no trainable SDE step among rl.num_steps={rl.num_steps} (the last step is never trained)",
            f"widen it, e.g. [0, {rl.num_steps}]",
        )
    if isinstance(rl.clip_range, tuple) and rl.clip_range[0] > rl.clip_range[1]:
        bad("rl.clip_range", list(rl.clip_range), "has e_low > e_high", "give [e_low, e_high] with e_low <= e_high")
    if train.warmup_ratio is None and train.warmup_steps > train.max_steps and cfg.train.schedule == "cosine":
        bad(
            "train.warmup_steps",
            train.warmup_steps,
            f"exceeds train.max_steps={train.max_steps}: the cosine decay never starts",
            f"use at most {train.max_steps}",
        )
    accelerate_config = cfg.distributed.accelerate_config
    if accelerate_config and check_files and missing("distributed.accelerate_config", accelerate_config):
        bad(
            "distributed.accelerate_config",
            cfg.distributed.accelerate_config,
            "does not exist",
            "point it at a file in recipes/accelerate/",
        )
    if problems:
        raise RecipeError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(problems))


def _check_rollout_options(cfg: RunConfig, bad: Any) -> None:
    """``rl.rollout_chunks``, ``rl.overlap_rewards`` and ``rl.reference_device`` against the rest of the recipe."""
    rl = cfg.rl
    local_prompts = cfg.prompts_per_step // max(1, _world(cfg))
    if rl.rollout_chunks > max(1, local_prompts):
        bad(
            "rl.rollout_chunks",
            rl.rollout_chunks,
            f"exceeds the {local_prompts} prompts (groups) each process samples a step",
            f"use at most {max(1, local_prompts)} (chunks hold whole groups)",
        )
    if rl.overlap_rewards and rl.rollout_chunks < 2:
        bad(
            "rl.overlap_rewards",
            True,
            "has nothing to overlap with rl.rollout_chunks=1 (the rewards wait for the whole rollout)",
            "set rl.rollout_chunks to 2 or more",
        )
    if rl.reference_device == "cpu" and cfg.train.lora.enabled:
        bad(
            "rl.reference_device",
            "cpu",
            "has no effect with train.lora.enabled: the reference is the same DiT with its adapters disabled "
            "(no second copy to move)",
            "remove rl.reference_device (or train the whole DiT)",
        )


def sde_trainable_steps(num_steps: int, window: SDEWindow | tuple[int, int] | None) -> int:
    """SDE steps trained in every rollout: those of the window (``[start, end)``, or an :class:`SDEWindow`)
    except the last denoising step (as ``mrgrpo.rollout.sde_step_mask``)."""
    if isinstance(window, SDEWindow):
        return window.trainable_steps(num_steps)
    start, end = window if window is not None else (0, num_steps)
    end = min(end, num_steps)
    n = max(0, end - start)
    return n - (1 if start <= num_steps - 1 < end else 0)


def _world(cfg: RunConfig) -> int:
    """Processes the run will have: ``WORLD_SIZE`` when launched, else ``distributed.num_processes`` (default 1)."""
    env = os.environ.get("WORLD_SIZE")
    if env and env.isdigit():
        return int(env)
    return cfg.distributed.num_processes or 1


def _check_layout(cfg: RunConfig, bad) -> None:
    """The trainers' batch layout: prompts over processes, micro-batches dividing what each process trains on."""
    train, rl, world = cfg.train, cfg.rl, _world(cfg)
    if cfg.stage == "rl":
        if train.images_per_step % rl.group_size:
            return  # reported above
        n_prompts = train.images_per_step // rl.group_size
        if n_prompts % world:
            bad(
                "train.images_per_step",
                train.images_per_step,
                f"gives {n_prompts} prompt(s) a step, not divisible by {world} processes",
                f"use a multiple of rl.group_size x processes = {rl.group_size * world}",
            )
            return
        local = n_prompts // world * rl.group_size
        micro = min(train.micro_batch_size, local)
        if local % micro:
            divisors = [d for d in range(1, local + 1) if local % d == 0]
            bad(
                "train.micro_batch_size",
                train.micro_batch_size,
                f"does not divide the {local} images each of {world} process(es) trains on a step",
                f"use a divisor of {local}, e.g. {max(d for d in divisors if d <= micro)}",
            )
    else:
        per_step = train.micro_batch_size * world
        if train.images_per_step % per_step:
            bad(
                "train.images_per_step",
                train.images_per_step,
                f"is not a multiple of train.micro_batch_size x processes = {per_step}",
                f"use a multiple of {per_step}",
            )
