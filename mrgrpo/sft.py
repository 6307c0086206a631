"""The flow-matching trainer for DeepGen's pre-training and SFT stages (``stage: pretrain | sft``).

The loss is the policy's :meth:`~mrgrpo.policies.base.DiffusionPolicy.flow_matching_loss`
(``x_s = (1 - s) x0 + s eps``, target ``eps - x0``, per-image mean then batch mean, ``s`` from
the shift-3 law), the same function MR-GRPO adds as its auxiliary SFT term
(:func:`mrgrpo.losses.flow_matching_step_loss` is called by both trainers). Batches come from
:func:`mrgrpo.sft_data.build_sft_stream`: text-to-image and editing batches mixed in
``sft.t2i_edit_ratio``, caption dropout on text-to-image, sized to ``sft.pixel_budget``.
Stage freezing is the policy's (``pretrain``: think tokens + projectors + connector; ``sft``:
+ DiT + VLM LoRA). Optimiser, schedule, checkpoints, tracking: :mod:`mrgrpo.trainer_base`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from mrgrpo.config import RecipeError, RunConfig
from mrgrpo.losses import flow_matching_step_loss
from mrgrpo.rollout import sample_ode
from mrgrpo.seeding import SeedStream, derive_seed
from mrgrpo.tracking import plot_curves
from mrgrpo.trainer_base import TrainerBase, build_policy, destroy_process_group, world_size


class SFTTrainer(TrainerBase):
    """Pre-training / SFT of a policy with the flow-matching loss.

    Args:
        cfg: the validated recipe (``stage: pretrain`` or ``sft``).
        policy: a built policy (default: from the recipe).
    """

    def __init__(self, cfg: RunConfig, *, policy=None):
        train = cfg.train
        world = world_size()
        per_step = train.micro_batch_size * world
        if train.images_per_step % per_step:
            raise RecipeError(
                f"train.images_per_step={train.images_per_step} is not a multiple of train.micro_batch_size x "
                f"processes = {per_step}. "
                f"Fix: use a multiple of {per_step}."
            )
        super().__init__(cfg, train.images_per_step // per_step)
        from mrgrpo.sft_data import build_sft_stream

        rank = self.accelerator.process_index
        self.stream = build_sft_stream(
            cfg.data.sft_sources,
            cfg.sft,
            train.micro_batch_size,
            train.seed,
            resolve_path=cfg.resolve_path,
            rank=rank,
            world_size=self.accelerator.num_processes,
            allow_empty=False,
        )
        torch.manual_seed(derive_seed(train.seed, SeedStream.SFT_PROCESS, rank))
        self.setup_model(policy if policy is not None else build_policy(cfg), cfg.stage, reference=False)
        self.policy.train()
        self._sample_prompts: list[str] | None = None

    def extra_state(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "sample_prompts": self._sample_prompts}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
        self._sample_prompts = state.get("sample_prompts")

    def _data_metrics(self) -> dict[str, float]:
        stats = getattr(self.stream, "stats", None)
        if stats is None:
            return {}
        counts = stats.as_dict() if hasattr(stats, "as_dict") else dict(stats)
        return {f"data/{k}": float(v) for k, v in counts.items() if isinstance(v, (int, float))}

    def train_step(self, step: int) -> dict[str, float]:
        losses: dict[str, list[float]] = {"t2i": [], "edit": []}
        grad_norms: list[float] = []
        images = 0
        for micro in range(self.accum):
            batch = next(self.stream)
            if self._sample_prompts is None:
                self._sample_prompts = [p for p in batch.prompts if p][:4] or ["a photo"]
            gen = torch.Generator(device=self.device).manual_seed(
                derive_seed(self.cfg.train.seed, SeedStream.SFT_NOISE, step, micro, self.accelerator.process_index)
            )
            with self.accelerator.accumulate(self.model):
                with self.autocast():
                    loss = flow_matching_step_loss(self.model, batch, generator=gen)
                losses[batch.kind].append(loss.item())
                self.backward_and_maybe_step(loss, grad_norms)
            images += len(batch)
        all_losses = losses["t2i"] + losses["edit"]
        out = {"loss": float(np.mean(all_losses))}
        for kind, vals in losses.items():
            if vals:
                out[f"loss/{kind}"] = float(np.mean(vals))
        if grad_norms:
            out["grad_norm"] = float(np.mean(grad_norms))
        out["images"] = float(images)
        return out

    @torch.no_grad()
    def sample_grid(self, step: int) -> None:
        """ODE samples of a few fixed prompts (eval CFG and steps) as ``samples/step-N.png``."""
        if not self.is_main or not self._sample_prompts:
            return
        rl, ev = self.cfg.rl, self.cfg.eval
        prompts = self._sample_prompts
        was_training = self.policy.training
        self.policy.eval()
        side = max(32, min(rl.height, (self.cfg.sft.pixel_budget // 32) * 32))
        with self.autocast():
            enc = self.policy.encode(prompts, negative_prompt=rl.negative_prompt if ev.cfg_scale > 1 else None)
        gens = [torch.Generator(device=self.device).manual_seed(i) for i in range(len(prompts))]
        noise = torch.cat([self.policy.init_noise(1, side, side, g) for g in gens]).to(self.device)
        final = sample_ode(
            lambda x, s, c: self.policy.velocity(x, s, c),
            noise,
            self.policy.sigmas(ev.num_steps, side, side).to(self.device),
            enc.cond,
            uncond=enc.uncond,
            cfg_scale=ev.cfg_scale,
            autocast=self.autocast,
        )
        with self.autocast():
            pixels = self.policy.decode(final).float()
        self.run_tracker.save_samples(step, pixels, nrow=len(prompts), captions=prompts)
        self.policy.train(was_training)

    def step_once(self, step: int) -> dict[str, float]:
        """One optimizer step over ``accum`` micro-batches; sample grid when due."""
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics = self.train_step(step)
        dt = time.perf_counter() - t0
        local = torch.tensor([metrics["loss"], metrics["images"]], dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.reduce(local.to(self.device), reduction="sum").cpu()
            metrics["loss"] = float(local[0]) / self.accelerator.num_processes
        metrics.update(
            {
                "lr": float(self.lr_scheduler.get_last_lr()[0]),
                "time/step": dt,
                "images_per_s": float(local[1]) / dt,
                "optimizer_steps": self.optimizer_steps,
            }
        )
        metrics.update(self._data_metrics())
        if step % cfg.logging.sample_every == 0 or step == cfg.train.max_steps:
            self.sample_grid(step)
        return metrics

    def fit(self) -> list[dict[str, float]]:
        """Train until ``train.max_steps`` (resuming if asked); returns the per-step metrics."""

        def plot() -> None:
            plot_curves(
                self.run_tracker.metrics_path,
                self.out / "loss_curve.png",
                prefixes=("loss",),
                title=f"{self.cfg.stage} loss",
            )

        return self.run_loop(
            self.step_once,
            desc=self.cfg.stage.upper(),
            plot=plot,
            postfix=lambda m: {"loss": f"{m['loss']:.4f}", "step_s": f"{m['time/step']:.2f}"},
        )


def train(cfg: RunConfig) -> int:
    """Entry point of ``mrgrpo train`` for ``stage: pretrain | sft``."""
    try:
        SFTTrainer(cfg).fit()
    finally:
        destroy_process_group()
    return 0
