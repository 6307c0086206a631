"""The recipe schema: one pydantic model per section, each field with a default and a description.

:class:`RunConfig` is a whole run. Loading, overrides and cross-field checks are in
:mod:`mrgrpo.config` and :mod:`mrgrpo.recipe_checks`; ``mrgrpo recipes schema`` prints the fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from mrgrpo.errors import RecipeError  # noqa: F401  (re-exported)
from mrgrpo.policies.common import DIT_LORA_TARGETS
from mrgrpo.recipe_paths import expand_vars, resolve_path  # noqa: F401  (re-exported)
from mrgrpo.sde_window import SDEWindow

Stage = Literal["rl", "pretrain", "sft"]


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
    sde_window: SDEWindow | None = Field(
        None,
        description="Steps that use the SDE (ODE outside, only these trained): [start, end) for a fixed window, or "
        "{mode: random | sliding, size, ...} (docs/training.md, Cheaper rollouts). null: every step.",
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
    rollout_chunks: int = Field(
        1,
        ge=1,
        description="Sample each rollout in this many chunks of whole groups (decoded and scored chunk by chunk).",
    )
    overlap_rewards: bool = Field(
        False,
        description="Score a finished chunk in a background thread while the next chunks are sampled "
        "(needs rl.rollout_chunks >= 2; same results as without).",
    )
    reference_device: Literal["same", "cpu"] = Field(
        "same",
        description="Where the frozen reference DiT of a full fine-tune (rl.beta > 0) lives and runs: `same` as the "
        "policy, or `cpu` (no second DiT on the accelerator; slower KL).",
    )
    reward_failure: Literal["mask", "stop"] = Field(
        "mask", description="When a reward cannot score images: mask them (logged) or stop the run with an error."
    )
    flip_advantage_sign: bool = Field(
        False, description="Debug: negate advantages (the reward must then fall); never use for real runs."
    )

    @field_validator("sde_window", mode="before")
    @classmethod
    def _window_shorthand(cls, v):
        return SDEWindow.coerce(v)

    @field_serializer("sde_window")
    def _window_compact(self, v: SDEWindow | None):
        return v.compact() if v is not None else None


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
    on_start: bool = Field(
        False,
        description=(
            "Also evaluate the starting policy before the first update (logged as step 0; not on resume), so the "
            "curves show where training began."
        ),
    )
    prompts: int = Field(
        16,
        ge=1,
        description=(
            "Held-out prompts per evaluation: the first N of `eval.sources`, in file order, split over the processes."
        ),
    )
    samples_per_prompt: int = Field(
        1,
        ge=1,
        description=(
            "Images per held-out prompt, each from its own fixed noise (more images: a less noisy `eval/<reward>`, "
            "at that many times the cost)."
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
    decay: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="Largest EMA decay: at optimizer step k >= 2 the decay is min(decay, k / (k + 9)) "
        "(diffusers' EMAModel warm-up: a copy at step 1, 0.5 at step 9, 0.9 from step 81).",
    )


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
    plot_every: int = Field(
        10,
        ge=1,
        description=(
            "Redraw the run's curve figure every N steps (and at the last step); each redraw reads the whole "
            "metrics file, which costs more than a step of a tiny model."
        ),
    )
    sample_every: int = Field(50, ge=1, description="Write a sample grid PNG every N steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (needs `wandb` installed).")
    wandb_project: str = Field("mrgrpo", description="W&B project name.")
    progress_bar: bool = Field(True, description="Show a progress bar on the console (main process).")
    dump_rollouts: bool = Field(
        False,
        description="Write per-sample rewards, advantages and log-probs (of the stored SDE steps, `log_prob_steps`) "
        "of every step to rollouts/step-N.rank-R.pt.",
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
