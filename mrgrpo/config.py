"""Typed recipes: one pydantic schema for a whole run, YAML loading, ``--set a.b=c`` overrides.

Every field has a default matching the DeepGen paper's RL stage (``docs/training.md``) and a
one-line description (``mrgrpo recipes schema`` prints them as a table). Loading checks, before
any model is built: unknown keys, wrong types, and impossible combinations (a mixture naming an
undefined reward, a batch not divisible by the group size, all-zero weights, missing files).
Every failure is a :class:`RecipeError` naming the field, the bad value and the fix.

Relative paths in a recipe are resolved against the recipe file's folder.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mrgrpo.errors import MrgrpoError
from mrgrpo.policies.common import DIT_LORA_TARGETS

Stage = Literal["rl", "pretrain", "sft"]


class RecipeError(MrgrpoError, ValueError):
    """A recipe that cannot run; the message names the field, the value and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------
# policy and rewards
# --------------------------------------------------------------------------------------
class PolicyConfig(_Strict):
    name: str = Field(
        "deepgen", description="Policy registry name or 'package.module:factory' (see `mrgrpo.registry.POLICIES`)."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the policy factory (model ids/paths, dtype, LoRA, ...)."
    )
    checkpoint: str | None = Field(
        None,
        description=(
            "Weights to start from: a directory written by `policy.save`, or a released DeepGen checkpoint "
            "(.safetensors/.pt)."
        ),
    )


class RewardSpec(_Strict):
    name: str | None = Field(
        None, description="Reward registry name or dotted path; defaults to the key this spec is stored under."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the reward factory.")
    batch_size: int = Field(64, ge=1, description="Images per call to this reward.")


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
class PromptSource(_Strict):
    name: str = Field(..., description="Source name, used in logs (`data/<name>`).")
    path: str = Field(
        ...,
        description=(
            "Prompt file: .txt (one prompt a line), .jsonl (`prompt` [+ `image`, fields]) or .csv (`prompt` column)."
        ),
    )
    format: Literal["auto", "txt", "jsonl", "csv"] = Field(
        "auto", description="File format; `auto` picks it from the extension."
    )
    kind: Literal["t2i", "edit"] = Field(
        "t2i", description="`t2i` prompts, or `edit` records with reference image path(s) + instruction."
    )
    weight: float = Field(
        1.0, ge=0, description="Sample weight of the source (paper: 3.0 text rendering, 1.0 general)."
    )
    rewards: dict[str, float] = Field(
        ...,
        description=(
            "Reward mixture of the source: reward name -> weight (paper text rendering: unifiedreward_think 0.2, "
            "clip 0.1, ocr 0.7)."
        ),
    )
    required: bool = Field(
        True,
        description=(
            "Fail at start when the file is missing; `false` skips it with a warning (for sources users point at "
            "their copies)."
        ),
    )


class SFTSource(_Strict):
    name: str = Field(..., description="Source name, used in logs.")
    path: str = Field(
        ...,
        description=(
            "Records file (.json/.jsonl), a folder of them, or WebDataset shards (`{000..009}.tar` brace pattern)."
        ),
    )
    format: Literal["t2i", "caption", "edit", "webdataset"] = Field(
        "t2i",
        description=(
            "`t2i`: {image_path, txt}; `caption`: {image, annotation}; `edit`: {input_image, output_image, "
            "instruction}; `webdataset`: tar shards."
        ),
    )
    caption_key: str = Field(
        "caption", description="Key inside `annotation` (caption format) or the text key of webdataset samples."
    )
    image_root: str | None = Field(
        None,
        description=(
            "Folder that relative image paths in the records are resolved against (default: the records file's folder)."
        ),
    )
    weight: float = Field(1.0, ge=0, description="Sample weight among SFT sources of the same kind.")
    required: bool = Field(True, description="Fail at start when missing; `false` skips it with a warning.")


class DataConfig(_Strict):
    sources: list[PromptSource] = Field(
        default_factory=list, description="RL prompt sources, each with its reward mixture."
    )
    source_sampling: Literal["prompts_x_weight", "weight"] = Field(
        "prompts_x_weight",
        description=(
            "Source probability proportional to (number of prompts x weight), as in the paper, or to weight only."
        ),
    )
    sft_sources: list[SFTSource] = Field(
        default_factory=list,
        description="Image datasets for the pretrain/SFT stages and for the auxiliary SFT loss of MR-GRPO.",
    )
    shuffle: bool = Field(True, description="Shuffle prompts within each source (seeded).")


# --------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------
class RLConfig(_Strict):
    sampler: Literal["sde", "cps", "dance"] = Field(
        "cps", description="Rollout SDE: `cps` (DeepGen default), `sde` (Flow-GRPO) or `dance` (DanceGRPO)."
    )
    noise_level: float | None = Field(
        None, ge=0, description="Sampler noise `a`; null takes the sampler's default (sde 0.7, cps 1.0, dance 0.3)."
    )
    cps_logprob: Literal["gaussian", "unnormalised"] = Field(
        "gaussian", description="Log-prob of `cps` steps: a proper Gaussian density, or DeepGen's `-mean((x'-mu)^2)`."
    )
    num_steps: int = Field(50, ge=2, description="Denoising steps per rollout.")
    group_size: int = Field(8, ge=2, description="G: images sampled per prompt (one group).")
    height: int = Field(512, ge=16, description="Rollout image height in pixels (multiple of 16).")
    width: int = Field(512, ge=16, description="Rollout image width in pixels (multiple of 16).")
    timestep_fraction: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Fraction of the SDE steps trained, a random subset per rollout (the last step excluded).",
    )
    sde_window: tuple[int, int] | None = Field(
        None, description="[start, end) step indices that use the SDE; ODE outside (Flow-GRPO-Fast). null: every step."
    )
    shared_noise: bool = Field(False, description="Start all G samples of a group from the same initial noise.")
    cfg_scale: float = Field(0.0, ge=0, description="Classifier-free guidance during rollouts (paper: 0, i.e. off).")
    negative_prompt: str = Field("", description="Negative prompt for CFG (empty prompt through the template for T2I).")
    clip_range: float | tuple[float, float] = Field(1e-4, description="Policy ratio clip e, or [e_low, e_high].")
    beta: float = Field(5e-7, ge=0, description="KL coefficient; 0 builds no reference.")
    kl_type: Literal["velocity", "mean"] = Field(
        "velocity", description="KL in velocity space (default) or between step means (x-space)."
    )
    adv_mode: Literal["gdpo", "grpo"] = Field(
        "gdpo",
        description="`gdpo`: each reward normalised within its group (MR-GRPO); `grpo`: the weighted sum normalised.",
    )
    adv_eps: float = Field(1e-4, gt=0, description="eps added to every std in the advantages.")
    adv_clip: float = Field(5.0, gt=0, description="Advantages clipped to [-c, c].")
    sft_aux_coef: float = Field(
        1e-4,
        ge=0,
        lt=1,
        description="lambda: L = (1 - lambda) L_grpo + lambda L_sft; 0 disables the auxiliary SFT loss.",
    )
    sft_aux_every: int = Field(
        1,
        ge=1,
        description=(
            "Add the auxiliary SFT loss every k rollout steps (one SFT batch per optimizer step of those rollouts)."
        ),
    )
    sft_aux_batch_size: int = Field(8, ge=1, description="Images in each auxiliary SFT batch (per process).")
    inner_epochs: int = Field(
        1,
        ge=1,
        description="Passes over each rollout batch; each pass takes train.updates_per_rollout optimizer steps.",
    )
    reward_failure: Literal["mask", "stop"] = Field(
        "mask", description="When a reward cannot score images: mask them (logged) or stop the run with an error."
    )
    flip_advantage_sign: bool = Field(
        False, description="Debug: negate advantages (the reward must then fall); never use for real runs."
    )

    @field_validator("sde_window")
    @classmethod
    def _window_order(cls, v):
        if v is not None and not (0 <= v[0] < v[1]):
            raise ValueError(f"sde_window must be [start, end) with 0 <= start < end, got {list(v)}")
        return v


class SFTConfig(_Strict):
    caption_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Probability a text-to-image caption is replaced by the empty prompt (editing: never).",
    )
    t2i_edit_ratio: tuple[float, float] = Field(
        (3.0, 1.0), description="Batches of text-to-image : editing (pre-training 3:1, SFT 2:1)."
    )
    pixel_budget: int = Field(
        512, ge=32, description="Images resized to about budget^2 pixels keeping aspect, sides multiples of 32."
    )
    timestep_shift: float = Field(3.0, gt=0, description="Shift k of the training noise law s = k u / (1 + (k - 1) u).")
    num_workers: int = Field(0, ge=0, description="DataLoader workers for image decoding.")


class EvalConfig(_Strict):
    sources: list[PromptSource] = Field(
        default_factory=list,
        description=(
            "Held-out prompt sources (MR-GRPO): each prompt is sampled once with the ODE sampler from fixed noise "
            "and scored with its source's reward mixture (`eval/<reward>`, `eval/mean`)."
        ),
    )
    every: int = Field(100, ge=1, description="Evaluate every N steps (and at the last step); MR-GRPO only.")
    prompts: int = Field(
        16,
        ge=1,
        description=(
            "Held-out prompts per evaluation: the first N of `eval.sources`, in file order, split over the processes."
        ),
    )
    num_steps: int = Field(
        50, ge=2, description="ODE denoising steps of evaluation images and of the sample grids of both trainers."
    )
    cfg_scale: float = Field(
        4.0,
        ge=0,
        description=(
            "CFG scale of evaluation images and sample grids (paper: 4.0); <= 1 disables CFG (no negative prompt is "
            "encoded)."
        ),
    )


class EMAConfig(_Strict):
    enabled: bool = Field(False, description="Keep an exponential moving average of the trained weights.")
    decay: float = Field(0.9, gt=0, lt=1, description="EMA decay per optimizer step.")


class LoRAConfig(_Strict):
    enabled: bool = Field(
        False, description="Train a LoRA on the DiT instead of the full DiT (reference = adapters disabled)."
    )
    rank: int = Field(32, ge=1, description="LoRA rank r.")
    alpha: float = Field(64.0, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DIT_LORA_TARGETS),
        description="Module names that get adapters (default: the 8 joint-attention projections, "
        "flow_grpo's SD3 LoRA targets).",
    )


class TrainConfig(_Strict):
    @field_validator("updates_per_rollout")
    @classmethod
    def _positive_updates(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"updates_per_rollout must be a positive integer or 'per_timestep', got {v}")
        return v

    lr: float = Field(2e-6, gt=0, description="Peak learning rate (paper RL: 2e-6; pretrain 1e-4; SFT 5e-5).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (applied to matrices only).")
    schedule: Literal["constant_with_warmup", "cosine"] = Field(
        "constant_with_warmup", description="LR schedule after the linear warm-up."
    )
    warmup_steps: int = Field(
        20, ge=0, description="Linear warm-up steps (RL: rollouts, whatever updates_per_rollout; SFT: optimizer steps)."
    )
    warmup_ratio: float | None = Field(
        None, ge=0, lt=1, description="Warm-up as a fraction of max_steps (overrides warmup_steps when set)."
    )
    images_per_step: int = Field(
        256,
        ge=1,
        description=(
            "Global images per step (RL: prompts x G of one rollout over all processes; SFT: images per optimizer "
            "step)."
        ),
    )
    updates_per_rollout: int | Literal["per_timestep"] = Field(
        1,
        description=(
            "RL optimizer steps per pass over a rollout: 1 (all samples and trained timesteps accumulate into one "
            "step; the ratio stays 1), k (the groups split into k steps, groups kept whole) or `per_timestep` (one "
            "step per trained timestep over the whole batch: the released DeepGen-RL schedule). See docs/training.md."
        ),
    )
    micro_batch_size: int = Field(
        8, ge=1, description="Images per forward/backward on one process (gradients accumulate)."
    )
    max_steps: int = Field(
        1500,
        ge=1,
        description=(
            "Steps of the run (RL: rollouts; SFT: optimizer steps). The LR schedule and warm-up count these steps."
        ),
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm; null disables.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "bf16", description="Model dtype for forward passes; log-probs stay float32."
    )
    seed: int = Field(42, ge=0, le=2**63 - 1, description="Base seed (>= 0); each process derives its own.")
    ema: EMAConfig = Field(default_factory=EMAConfig, description="EMA of trained weights.")
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="LoRA on the DiT.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        False,
        description=(
            "Recompute activations in the backward pass to save memory. `auto`: only on CUDA when weights + "
            "gradients + "
            "AdamW states would take more than half of the device's memory (a heuristic; it trades ~30% train time "
            "for memory)."
        ),
    )
    fused_optimizer: bool | Literal["auto"] = Field(
        "auto",
        description=(
            "torch's fused AdamW kernel (one launch for all parameters). `auto`: on CUDA only; same update up to "
            "float rounding."
        ),
    )
    compile_dit: bool = Field(
        False,
        description=(
            "Regional torch.compile of the DiT's transformer blocks (opt-in: the first steps pay the compile time)."
        ),
    )
    checkpoint_every: int = Field(50, ge=1, description="Save a checkpoint every N optimizer steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept on disk.")
    resume: str | None = Field(
        None, description="`auto` (latest checkpoint in output_dir), a checkpoint directory, or null."
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _bare_no(cls, v):
        # YAML 1.1 reads a bare `no` (in a file or in `--set train.mixed_precision=no`) as false
        return "no" if v is False else v

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"AdamW betas must both lie in [0, 1), got {list(v)}; the usual values are [0.9, 0.999]")
        return v


class DistributedConfig(_Strict):
    accelerate_config: str | None = Field(
        None, description="accelerate config file (recipes/accelerate/*.yaml) used by `mrgrpo train --launch`."
    )
    num_processes: int | None = Field(
        None, ge=1, description="Processes for `--launch`; default from the accelerate config."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend; `auto` = nccl on GPU, gloo on CPU."
    )


class LoggingConfig(_Strict):
    log_every: int = Field(1, ge=1, description="Write metrics every N steps.")
    sample_every: int = Field(50, ge=1, description="Write a sample grid PNG every N steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (needs `wandb` installed).")
    wandb_project: str = Field("mrgrpo", description="W&B project name.")
    progress_bar: bool = Field(True, description="Show a progress bar on the console (main process).")
    dump_rollouts: bool = Field(
        False,
        description="Write per-sample rewards, advantages and log-probs of every step to rollouts/step-N.rank-R.pt.",
    )


class RunConfig(_Strict):
    """A whole run."""

    stage: Stage = Field("rl", description="Which trainer runs: `rl` (MR-GRPO), `pretrain` or `sft` (flow matching).")
    output_dir: str = Field(
        "outputs/run", description="Run folder: config.yaml, metrics.jsonl, checkpoints/, samples/."
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The diffusion policy.")
    rewards: dict[str, RewardSpec] = Field(
        default_factory=dict, description="Rewards of the run by name (the names the mixtures use)."
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Prompt and image sources.")
    rl: RLConfig = Field(default_factory=RLConfig, description="MR-GRPO settings.")
    sft: SFTConfig = Field(
        default_factory=SFTConfig, description="Flow-matching (pretrain/SFT and auxiliary) settings."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation and checkpointing.")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Multi-process launch.")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="Periodic evaluation on held-out prompts and the sample grids' sampler."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics and sample grids.")

    # filled by load_recipe, not part of the schema
    _recipe_path: Path | None = None

    def resolve_path(self, path: str, field: str = "a path") -> Path:
        """``path`` expanded (``~``, ``${VAR}``) and, when relative, taken against the recipe's folder."""
        return resolve_path(path, self._recipe_path.parent if self._recipe_path else None, field)

    @property
    def prompts_per_step(self) -> int:
        """Global prompts per RL step (``images_per_step / group_size``)."""
        return self.train.images_per_step // self.rl.group_size


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, field: str = "a path") -> str:
    """``text`` with ``${VAR}`` / ``${VAR:-default}`` replaced from the environment and a leading ``~`` expanded.

    Raises :class:`RecipeError` for ``${VAR}`` of a variable that is not set (no silent empty string).
    """

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                raise RecipeError(
                    f"field `{field}`: {text!r} uses the environment variable {m.group(1)} "
                    "which is not set. "
                    f"Fix: export {m.group(1)}=..., or write ${{{m.group(1)}:-default}}."
                )
            return m.group(2)
        return value

    return os.path.expanduser(_ENV.sub(sub, text))


def resolve_path(path: str, base: Path | None, field: str = "a path") -> Path:
    """Expand ``~``, ``${VAR}`` and ``${VAR:-default}``; relative paths are taken against ``base``."""
    p = Path(expand_vars(path, field))
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (``["a", "b", "c"]``, value parsed as YAML: numbers, bools, lists, null)."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected key=value, e.g. --set rl.group_size=4")
    key, _, raw = text.partition("=")
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise RecipeError(f"--set {text!r}: empty key; write e.g. --set train.lr=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 as a string
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b=c`` entries into the nested recipe dict (list items by index: ``data.sources.0.weight=2``)."""
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = _list_item(node, k, keys[: i + 1], text)
                continue
            if not isinstance(node, dict):
                raise RecipeError(
                    f"--set {text!r}: {'.'.join(keys[:i])} is a value, not a section. "
                    f"Fix: set {'.'.join(keys[:i])}=... directly"
                )
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
        last = keys[-1]
        if isinstance(node, list):
            idx = _index(last, keys, text, len(node))
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"--set {text!r}: {'.'.join(keys[:-1])} is a value, not a section")
    return data


def _index(k: str, keys: list[str], text: str, n: int) -> int:
    if not k.isdigit() or int(k) >= n:
        raise RecipeError(f"--set {text!r}: {'.'.join(keys)} needs a list index below {n}")
    return int(k)


def _list_item(node: list, k: str, keys: list[str], text: str) -> Any:
    return node[_index(k, keys, text, len(node))]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: the recipe does not match the schema ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            parent = ".".join(str(x) for x in e["loc"][:-1])
            fix = (
                f"remove it or fix its spelling; run `mrgrpo recipes schema` for the fields of {parent or 'the recipe'}"
            )
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  - field `{loc}`: unknown key (value {shown}). Fix: {fix}.")
        elif e["type"] == "missing":
            lines.append(f"  - field `{loc}`: required but missing. Fix: add it (see `mrgrpo recipes schema`).")
        else:
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  - field `{loc}`: got {shown}: {e['msg']}. Fix: give a value of the right type/range.")
    return "\n".join(lines)


def load_recipe(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    *,
    data: dict[str, Any] | None = None,
    check_files: bool = True,
) -> RunConfig:
    """Load, override and validate a recipe; raise :class:`RecipeError` on any problem.

    Args:
        path: the YAML file (or None with ``data``).
        overrides: ``["a.b=c", ...]`` applied before validation (typed by the schema).
        data: a recipe as a dict instead of a file (relative paths then resolve against CWD).
        check_files: also check that required data files exist.
    """
    source = str(path) if path is not None else "<recipe>"
    recipe_path: Path | None = None
    if path is not None:
        recipe_path = Path(path)
        text = read_text_file(
            recipe_path,
            "recipe file",
            "pass a YAML recipe; `mrgrpo recipes list` shows the shipped ones",
            error=RecipeError,
        )
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{source}: not valid YAML: {exc}. Fix: correct the YAML syntax.") from None
    if not isinstance(data or {}, dict):
        raise RecipeError(
            f"{source}: the top level must be a mapping of sections (policy, rewards, data, rl, train, ...)."
        )
    data = copy.deepcopy(dict(data or {}))  # overrides must not write into the caller's dict
    apply_overrides(data, list(overrides or []))
    check_moved_fields(data, source)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err, source)) from None
    cfg._recipe_path = recipe_path.resolve() if recipe_path else None
    try:  # output_dir and resume are taken as given (CWD-relative), but ${VAR} and ~ expand as in every path
        cfg.output_dir = expand_vars(cfg.output_dir, "output_dir")
        if cfg.train.resume not in (None, "auto"):
            cfg.train.resume = expand_vars(cfg.train.resume, "train.resume")
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    check_recipe(cfg, check_files=check_files, source=source)
    return cfg


_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip file",
    b"%PDF": "a PDF",
    b"RIFF": "a RIFF (WebP/WAV) file",
}


def read_text_file(
    path: str | os.PathLike, what: str, fix: str, *, error: type[Exception] | None = None, max_bytes: int | None = None
) -> str:
    """The UTF-8 text of ``path``, or ``error`` (default :class:`RecipeError`) naming the file and the fix.

    Catches what a careless path gives: a missing file, a folder, no read permission, a binary file
    (an image given as a recipe), text in another encoding, a file larger than ``max_bytes``.
    """
    err = error or RecipeError
    p = Path(path)
    if not p.exists():
        raise err(f"{what} {str(p)!r} does not exist. Fix: {fix}.")
    if p.is_dir():
        raise err(f"{what} {str(p)!r} is a folder, not a file. Fix: {fix}.")
    if max_bytes is not None and p.stat().st_size > max_bytes:
        raise err(
            f"{what} {str(p)!r} is {p.stat().st_size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
            f"such a file can be. Fix: {fix}."
        )
    try:
        raw = p.read_bytes()
    except PermissionError:
        raise err(
            f"{what} {str(p)!r} cannot be read: permission denied. Fix: `chmod u+r {p}` or copy it somewhere readable."
        ) from None
    except OSError as exc:
        raise err(f"{what} {str(p)!r} cannot be read: {exc.strerror or exc}. Fix: {fix}.") from None
    kind = next((name for magic, name in _MAGIC.items() if raw.startswith(magic)), None)
    if kind is None and b"\x00" in raw[:4096] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        kind = "a binary file"
    if kind is not None:
        raise err(f"{what} {str(p)!r} is {kind}, not text. Fix: {fix}.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise err(
            f"{what} {str(p)!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}). "
            f"Fix: save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None
    return text.removeprefix("\ufeff")


# fields that moved to another section: old location -> new location
MOVED_FIELDS = {
    ("data", "eval_sources"): "eval.sources",
    ("rl", "eval_cfg_scale"): "eval.cfg_scale",
    ("rl", "eval_num_steps"): "eval.num_steps",
    ("logging", "eval_every"): "eval.every",
    ("logging", "eval_prompts"): "eval.prompts",
}


def check_moved_fields(data: dict[str, Any], source: str = "<recipe>") -> None:
    """Raise a :class:`RecipeError` naming the new place of every field that moved (e.g. ``rl.eval_cfg_scale``)."""
    problems = []
    for (section, key), new in MOVED_FIELDS.items():
        node = data.get(section)
        if isinstance(node, dict) and key in node:
            problems.append(
                f"  - field `{section}.{key}`: moved to `{new}`. Fix: write it as `{new}: {node[key]!r}` "
                f"(section `{new.split('.')[0]}:`)."
            )
    if problems:
        raise RecipeError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(problems))


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
        if rl.sde_window is not None and rl.sde_window[1] > rl.num_steps:
            bad(
                "rl.sde_window",
                list(rl.sde_window),
                f"ends after rl.num_steps={rl.num_steps}",
                f"use an end <= {rl.num_steps}",
            )
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
            list(rl.sde_window or ()),
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


def sde_trainable_steps(num_steps: int, window: tuple[int, int] | None) -> int:
    """Steps taken with the SDE: those in ``[start, end)`` except the last (as ``mrgrpo.rollout.sde_step_mask``)."""
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


def dump_config(cfg: RunConfig) -> str:
    """The resolved recipe as YAML (every field, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _with_absolute_paths(cfg: RunConfig) -> dict[str, Any]:
    """``cfg.model_dump(mode="json")`` with every recipe-relative file path made absolute.

    Relative paths are taken against the recipe's folder (or the CWD for a recipe given as a
    dict); written as they are into ``output_dir/config.yaml`` they would be taken against the
    run folder when that file is loaded again, and point at files that are not there.
    """
    data = cfg.model_dump(mode="json")

    def fix(node: dict[str, Any], key: str, only_if_exists: bool = False) -> None:
        value = node.get(key)
        if not value or resolve_path(value, None).is_absolute():
            return
        p = cfg.resolve_path(value).absolute()
        if only_if_exists and not p.exists():
            return  # e.g. a hub id for policy.checkpoint
        node[key] = str(p)

    for section in ("sources", "sft_sources"):
        for src in data["data"][section]:
            fix(src, "path")
            if section == "sft_sources":
                fix(src, "image_root")
    for src in data["eval"]["sources"]:
        fix(src, "path")
    fix(data["policy"], "checkpoint", only_if_exists=True)
    fix(data["distributed"], "accelerate_config")
    return data


def save_resolved_config(cfg: RunConfig, output_dir: str | os.PathLike) -> Path:
    """Write the resolved recipe to ``output_dir/config.yaml`` atomically and return its path.

    File paths that the recipe gives relative to its folder are written absolute, so that the
    file loads back (``load_recipe(output_dir/config.yaml)``) and names the same files.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "config.yaml"
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(_with_absolute_paths(cfg), sort_keys=False))
    os.replace(tmp, target)
    return target


def schema_rows(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(field, type, default, description)`` of every leaf field, for the README table."""
    rows: list[tuple[str, str, str, str]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = info.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None:
            rows.extend(schema_rows(sub, key + "."))
            continue
        item_model = _list_model(ann)
        type_name = _type_name(ann)
        is_map = str(ann).startswith("dict")
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            made = info.get_default(call_default_factory=True)
            default = repr(made) if item_model is None else ("{}" if is_map else "[]")
        else:
            default = repr(info.default)
        rows.append((key, type_name, default, info.description or ""))
        if item_model is not None:
            rows.extend(schema_rows(item_model, key + (".<name>." if is_map else "[].")))
    return rows


def _list_model(ann: Any) -> type[BaseModel] | None:
    args = getattr(ann, "__args__", ()) or ()
    for a in args:
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _type_name(ann: Any) -> str:
    text = str(ann).replace("typing.", "")
    text = re.sub(r"<class '([^']+)'>", r"\1", text)
    return text.replace("mrgrpo.config.", "")


def schema_markdown() -> str:
    """The recipe schema as a Markdown table."""
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for key, typ, default, desc in schema_rows():
        lines.append(f"| `{key}` | `{typ}` | `{default}` | {desc} |")
    return "\n".join(lines)
