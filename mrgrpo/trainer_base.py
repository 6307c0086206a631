"""What the MR-GRPO and the flow-matching (pretrain/SFT) trainers share.

Accelerator set-up (gloo on CPU, DeepSpeed when launched with it), the policy's stage and
optimizer, the LR schedule, the optimizer step (clip, step, schedule, EMA), atomic checkpoints
with exact resume, the run folder (resolved config, tracker) and the final save.
Subclasses implement ``fit`` and may add state through :meth:`TrainerBase.extra_state`.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mrgrpo import checkpoint as ckpt
from mrgrpo.config import RecipeError, RunConfig, save_resolved_config
from mrgrpo.tracking import Tracker, progress


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(cfg: RunConfig, gradient_accumulation_steps: int):
    """An ``accelerate.Accelerator`` for the run (gloo on CPU, DeepSpeed when launched with it)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=False)]
    if world_size() > 1:  # a backend given to a single process makes accelerate expect a process group
        handlers.append(InitProcessGroupKwargs(backend=backend))
    kwargs: dict[str, Any] = {}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(
            zero_stage=int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")),
            gradient_accumulation_steps=gradient_accumulation_steps,
            gradient_clipping=cfg.train.grad_clip or 0.0,
            zero3_init_flag=False,
        )
        plugin.deepspeed_config["zero_allow_untested_optimizer"] = True
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch_size
        kwargs["deepspeed_plugin"] = plugin
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        kwargs_handlers=handlers,
        step_scheduler_with_optimizer=False,
        **kwargs,
    )


def build_optimizer(params: Sequence[tuple[str, torch.nn.Parameter]], cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (ndim >= 2); torch's fused kernel on CUDA
    (``train.fused_optimizer``)."""
    if not params:
        raise RecipeError("the policy has no trainable parameters for this stage. Fix: check the stage / train.lora.")
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = all(p.is_cuda for _, p in params)
    fused = cfg.train.fused_optimizer
    if fused is True and not on_cuda:
        raise RecipeError(
            "train.fused_optimizer: true needs every trained parameter on CUDA. Fix: use `auto` or false on CPU."
        )
    extra = {"fused": True} if (fused is True or (fused == "auto" and on_cuda)) else {}
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.train.lr, betas=cfg.train.betas, eps=1e-8, **extra
    )


def static_training_bytes(policy: torch.nn.Module, trainable: Sequence[tuple[str, torch.nn.Parameter]]) -> int:
    """Bytes of every weight plus float32 gradients and two AdamW moments of the trained ones."""
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    return weights + sum(p.numel() for _, p in trainable) * 4 * 3


def want_gradient_checkpointing(setting: bool | str, device: torch.device, static_bytes: int) -> bool:
    """``train.gradient_checkpointing``: ``auto`` turns it on on CUDA when the static memory exceeds half the device."""
    if setting != "auto":
        return bool(setting)
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return static_bytes > total // 2


def build_lr_lambda(cfg: RunConfig) -> Callable[[int], float]:
    """Linear warm-up, then constant or cosine to 0 at ``max_steps``."""
    total = cfg.train.max_steps
    warm = int(cfg.train.warmup_ratio * total) if cfg.train.warmup_ratio is not None else cfg.train.warmup_steps
    schedule = cfg.train.schedule

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return 1.0

    return factor


def build_policy(cfg: RunConfig):
    """Build the recipe's policy and load ``policy.checkpoint`` (starting weights)."""
    from mrgrpo.preflight import built_from
    from mrgrpo.registry import POLICIES

    policy = built_from(
        "policy.kwargs",
        f"the policy {cfg.policy.name!r}",
        lambda: POLICIES.build(cfg.policy.name, **cfg.policy.kwargs),
        cfg.policy.kwargs,
    )
    if cfg.policy.checkpoint:
        local = cfg.resolve_path(cfg.policy.checkpoint)
        # a path that exists locally, else the string as given (a hub id the policy may resolve)
        built_from(
            "policy.checkpoint",
            f"the starting weights {cfg.policy.checkpoint!r}",
            lambda: policy.load(str(local) if local.exists() else cfg.policy.checkpoint),
        )
    return policy


def destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class TrainerBase:
    """Shared state and plumbing; subclasses call :meth:`setup_model` then run their loop."""

    def __init__(self, cfg: RunConfig, gradient_accumulation_steps: int):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.accum = gradient_accumulation_steps
        self.accelerator = make_accelerator(cfg, gradient_accumulation_steps)
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.step = 0
        self.optimizer_steps = 0
        self.tracker: Tracker | None = None
        self.ema = None

    # -- model, optimizer, schedule ------------------------------------------------------
    def setup_model(self, policy, stage: str, *, reference: bool, reference_device: str = "same") -> None:
        """Freeze to ``stage``, build the reference if asked (``reference_device``: ``same`` or ``cpu``, see
        ``rl.reference_device``), move, wrap (DDP/DeepSpeed) and build the optimizer."""
        cfg = self.cfg
        policy.set_stage(stage, lora=cfg.train.lora.model_dump() if cfg.train.lora.enabled else None)
        if reference and reference_device != "same":
            if "device" not in inspect.signature(policy.enable_reference).parameters:
                raise RecipeError(
                    f"rl.reference_device: {reference_device}: the {type(policy).__name__} policy keeps its reference "
                    "on its own device. Fix: use rl.reference_device: same."
                )
            policy.enable_reference(device=reference_device)
        elif reference:
            policy.enable_reference()
        policy.to(self.device)
        self.policy = policy
        self.trainable = policy.trainable_parameters()
        self.gradient_checkpointing = want_gradient_checkpointing(
            cfg.train.gradient_checkpointing, self.device, static_training_bytes(policy, self.trainable)
        )
        if self.gradient_checkpointing and hasattr(policy, "enable_gradient_checkpointing"):
            policy.enable_gradient_checkpointing()
        if cfg.train.compile_dit:
            if not hasattr(policy, "compile_blocks"):
                raise RecipeError(
                    f"train.compile_dit: the {type(policy).__name__} policy has no compile_blocks(). Fix: set it to "
                    "false."
                )
            policy.compile_blocks()
        optimizer = build_optimizer(self.trainable, cfg)
        # the schedule drives the torch optimizer's param groups, which DDP and DeepSpeed wrappers share;
        # it is stepped by hand once per optimizer step (not once per process, as accelerate would).
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_lambda(cfg))
        self.model, self.optimizer = self.accelerator.prepare(policy, optimizer)
        if cfg.train.ema.enabled:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel([p for _, p in self.trainable], decay=cfg.train.ema.decay)

    def autocast(self):
        return self.accelerator.autocast()

    def backward_and_maybe_step(
        self, loss: torch.Tensor, grad_norms: list[float], *, step_scheduler: bool = True
    ) -> bool:
        """Backward one micro-batch (inside ``accelerator.accumulate``); step when gradients are synced.

        The LR schedule steps with the optimizer unless ``step_scheduler`` is False (the MR-GRPO
        trainer steps it once per rollout, whatever the number of optimizer steps per rollout).
        Returns whether an optimizer step was taken.
        """
        self.accelerator.backward(loss)
        if not self.accelerator.sync_gradients:
            return False
        if self.cfg.train.grad_clip:
            norm = self.accelerator.clip_grad_norm_([p for _, p in self.trainable], self.cfg.train.grad_clip)
            if norm is not None:
                grad_norms.append(float(norm))
        self.optimizer.step()
        if step_scheduler:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        if self.ema is not None:
            self.ema.step([p for _, p in self.trainable])
        return True

    # -- run folder ---------------------------------------------------------------------------
    def start_run(self) -> None:
        """Resume if asked, write the resolved config, open the tracker."""
        cfg, acc = self.cfg, self.accelerator
        resume_from = ckpt.load_with_fallback(cfg.train.resume, self.out, self.load_checkpoint)
        if acc.is_main_process:
            save_resolved_config(cfg, self.out)
        self.tracker = Tracker(
            self.out,
            enabled=acc.is_main_process,
            tensorboard=cfg.logging.tensorboard,
            wandb=cfg.logging.wandb,
            wandb_project=cfg.logging.wandb_project,
            config=cfg.model_dump(mode="json"),
            resume_step=self.step if resume_from is not None else None,
        )

    @property
    def run_tracker(self) -> Tracker:
        """The tracker :meth:`start_run` opened (an error before that)."""
        if self.tracker is None:
            raise RuntimeError("the run's tracker is not open yet: start_run() (called by run_loop / fit) opens it")
        return self.tracker

    def run_loop(
        self,
        one_step: Callable[[int], dict[str, float]],
        *,
        desc: str,
        postfix: Callable[[Mapping[str, float]], dict[str, str]],
        plot: Callable[[], None],
    ) -> list[dict[str, float]]:
        """Resume, then ``one_step(step) -> metrics`` until ``train.max_steps``: log and plot every
        ``log_every`` steps, progress bar, checkpoint every ``checkpoint_every`` steps and at the end, final save."""
        cfg = self.cfg
        self.start_run()
        tracker = self.run_tracker
        history: list[dict[str, float]] = []
        bar = progress(cfg.train.max_steps, self.step, self.is_main and cfg.logging.progress_bar, desc)
        try:
            if self.step == 0:
                before = self.start_metrics()
                if before:
                    tracker.log(0, before)
            while self.step < cfg.train.max_steps:
                step = self.step + 1
                metrics = one_step(step)
                self.step = step
                last = step == cfg.train.max_steps
                if step % cfg.logging.log_every == 0 or last:
                    tracker.log(step, metrics)
                if self.is_main and (step % cfg.logging.plot_every == 0 or last):
                    plot()
                history.append(metrics)
                bar.update(1)
                bar.set_postfix(**postfix(metrics))
                if step % cfg.train.checkpoint_every == 0 or last:
                    self.save_checkpoint(step)
            self.save_final()
        finally:
            bar.close()
            tracker.close()
            self.close()
        return history

    def start_metrics(self) -> dict[str, float]:
        """Metrics of the untrained model, logged as step 0 of a fresh run (not of a resumed one); none here."""
        return {}

    def close(self) -> None:
        """Release what the trainer holds besides the model (thread pools, clients)."""

    # -- checkpoints ----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable trainer state (data cursors) saved in ``trainer_state.json``."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def save_checkpoint(self, step: int) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        tmp = ckpt.begin(self.out, step, acc.is_main_process)
        acc.wait_for_everyone()
        deepspeed = acc.distributed_type.name == "DEEPSPEED"
        if deepspeed:
            self.model.save_checkpoint(str(tmp / "deepspeed"), tag="state", exclude_frozen_parameters=True)
        if acc.is_main_process:
            acc.unwrap_model(self.model).save(str(tmp / "policy"))
            if not deepspeed:
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), tmp / "ema.pt")
            ckpt.write_json(
                tmp / "trainer_state.json",
                {"step": step, "optimizer_steps": self.optimizer_steps, **self.extra_state()},
            )
        torch.save(ckpt.rng_state(), tmp / f"rng-rank{acc.process_index}.pt")
        acc.wait_for_everyone()
        final = ckpt.commit(self.out, step, self.cfg.train.keep_last) if acc.is_main_process else None
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote; a file that fails raises ``CheckpointError`` naming it."""
        acc, part = self.accelerator, ckpt.load_part
        state = ckpt.read_trainer_state(path)
        part(path / "policy", "policy weights", lambda: acc.unwrap_model(self.model).load(str(path / "policy")))
        if acc.distributed_type.name == "DEEPSPEED":
            part(
                path / "deepspeed",
                "DeepSpeed state",
                lambda: self.model.load_checkpoint(str(path / "deepspeed"), tag="state", load_module_strict=False),
            )
        else:
            part(
                path / "optimizer.pt",
                "optimizer state",
                lambda: self.optimizer.load_state_dict(
                    torch.load(path / "optimizer.pt", map_location=self.device, weights_only=False)
                ),
            )
        part(
            path / "scheduler.pt",
            "LR schedule",
            lambda: self.lr_scheduler.load_state_dict(
                torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False)
            ),
        )
        if self.ema is not None and (path / "ema.pt").exists():
            part(
                path / "ema.pt",
                "EMA weights",
                lambda: self.ema.load_state_dict(
                    torch.load(path / "ema.pt", map_location=self.device, weights_only=False)
                ),
            )
        rng_file = path / f"rng-rank{acc.process_index}.pt"
        if rng_file.exists():
            part(
                rng_file,
                "RNG state",
                lambda: ckpt.set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False)),
            )
        self.step = int(state["step"])
        self.optimizer_steps = int(state["optimizer_steps"])
        part(path / "trainer_state.json", "trainer state", lambda: self.load_extra_state(state))

    def save_final(self) -> None:
        """``output_dir/final`` (and ``final_ema`` with EMA) written by ``policy.save``."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            policy = acc.unwrap_model(self.model)
            policy.save(str(self.out / "final"))
            if self.ema is not None:
                backup = [p.detach().clone() for _, p in self.trainable]
                self.ema.copy_to([p for _, p in self.trainable])
                policy.save(str(self.out / "final_ema"))
                for (_, p), b in zip(self.trainable, backup):
                    p.data.copy_(b)
        acc.wait_for_everyone()
