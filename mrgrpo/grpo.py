"""The MR-GRPO trainer (``mrgrpo train`` for ``stage: rl``).

One step (``docs/training.md``):

1. the step's global prompt list is drawn (same on every process) and each rank takes its slice;
2. the policy encodes each prompt once and repeats the conditioning G times;
3. B*G trajectories are sampled in one batch, storing latents and float32 log-probs;
4. images are decoded and the :class:`~mrgrpo.reward_mixture.RewardMixture` scores each image with
   the rewards its source weighs (remote rewards run concurrently);
5. masked MR-GRPO advantages with batch statistics all-reduced over processes;
6. training on a random subset of the SDE steps per sample: recomputed velocity and float32
   log-prob, then :func:`~mrgrpo.losses.mrgrpo_step_loss` (clipped ratio, ``beta * KL`` against
   ``policy.reference()``, the auxiliary SFT term); gradients accumulate into
   ``train.updates_per_rollout`` optimizer steps per pass over the rollout (:mod:`mrgrpo.updates`),
   and the LR schedule steps once per rollout;
7. log (with diagnostics: ``zero_std_frac``, ratio spread, clip sides, ms per image), sample grid,
   evaluation, atomic checkpoint.

Model-specific code lives in the policy (:class:`mrgrpo.policies.base.DiffusionPolicy`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrgrpo.advantages import accelerate_sum_reduce, compute_advantages
from mrgrpo.config import RecipeError, RunConfig
from mrgrpo.losses import StepLossStats, flow_matching_step_loss, mean_kl, mrgrpo_step_loss, velocity_kl
from mrgrpo.prompts import PromptSampler, load_sources, rank_slice
from mrgrpo.recipe_checks import sde_trainable_steps
from mrgrpo.reward_mixture import RewardFailure, RewardMixture, ScoredRewards
from mrgrpo.rollout import RolloutBatch, choose_train_steps, guided_velocity, sample_generators, sample_ode
from mrgrpo.rollout_phase import RolloutPhase
from mrgrpo.sde import sde_step_with_logprob, step_mean_std
from mrgrpo.seeding import SeedStream, derive_seed, process_seed, train_order_rng
from mrgrpo.trainer_base import TrainerBase, build_policy, destroy_process_group, world_size
from mrgrpo.updates import plan_updates, update_layout

log = logging.getLogger(__name__)

__all__ = ["GRPOTrainer", "RewardFailure", "ScoredRewards", "train"]


def _zero_std_counts(values: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``[groups whose valid values are all equal (or fewer than 2 valid), groups with a valid value, 0]`` float64."""
    zero = total = 0
    for g in torch.unique(group_ids):
        members = (group_ids == g) & valid
        if not bool(members.any()):
            continue
        total += 1
        vals = values[members]
        zero += int(vals.numel() < 2 or bool(vals.max() == vals.min()))
    return torch.tensor([float(zero), float(total), 0.0], dtype=torch.float64)


class GRPOTrainer(RolloutPhase, TrainerBase):
    """MR-GRPO on any :class:`~mrgrpo.policies.base.DiffusionPolicy` with any rewards.

    Args:
        cfg: the validated recipe (``stage: rl``).
        policy: a built policy (default: from the recipe).
        rewards: ``{name: Reward}`` (default: from the recipe).
    """

    def __init__(self, cfg: RunConfig, *, policy=None, rewards: dict[str, Any] | None = None):
        self.cfg = cfg
        rl, train = cfg.rl, cfg.train
        self.G = rl.group_size  # read once: images per prompt (one group)
        self.out = Path(cfg.output_dir)
        self.sources = load_sources(cfg.data.sources, cfg.resolve_path)
        self.sampler = PromptSampler(
            self.sources, seed=train.seed, sampling=cfg.data.source_sampling, shuffle=cfg.data.shuffle
        )
        self.eval_sources = load_sources(cfg.eval.sources, cfg.resolve_path) if cfg.eval.sources else []
        self.mixtures = {s.name: s.rewards for s in self.sources}
        self.eval_mixtures = {s.name: s.rewards for s in self.eval_sources}
        used = {k for mix in (*self.mixtures.values(), *self.eval_mixtures.values()) for k, w in mix.items() if w > 0}

        # -- layout: prompts per process, micro-batches, accumulation ------------------------------
        world = world_size()
        n_prompts = cfg.prompts_per_step
        if n_prompts % world:
            raise RecipeError(
                f"train.images_per_step={train.images_per_step} gives {n_prompts} prompts a step, not divisible by "
                f"{world} processes. Fix: use a multiple of {self.G * world}."
            )
        self.local_prompts = n_prompts // world
        self.local_images = self.local_prompts * self.G
        n_sde = sde_trainable_steps(rl.num_steps, rl.sde_window)
        if n_sde == 0:
            raise RecipeError(
                f"rl.sde_window={rl.sde_window} leaves no trainable SDE step among rl.num_steps={rl.num_steps} (the "
                "last step is never trained). Fix: widen the window."
            )
        self.train_steps_per_sample = max(1, int(round(rl.timestep_fraction * n_sde)))
        try:
            self.layout = update_layout(
                train.updates_per_rollout,
                prompts=self.local_prompts,
                group_size=self.G,
                timesteps=self.train_steps_per_sample,
                micro_batch_size=train.micro_batch_size,
            )
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        self.micro = self.layout.micro
        self.accum = self.layout.accumulation  # backward passes per optimizer step

        super().__init__(cfg, self.accum)
        # data before models: a missing data set fails in seconds, not after loading 5B parameters
        self.sft_stream = self._build_sft_stream() if rl.sft_aux_coef > 0 else None
        torch.manual_seed(process_seed(train.seed, self.accelerator.process_index))
        self.setup_model(
            policy if policy is not None else build_policy(cfg),
            "rl",
            reference=rl.beta > 0,
            reference_device=rl.reference_device,
        )
        self.policy.eval()  # no dropout: the recomputed log-prob must match the rollout's

        self.rewards = RewardMixture.from_config(cfg, sorted(used), rewards, device=self.device)
        self.reward_names = self.rewards.names
        self.start_rollout_phase()

    # ---------------------------------------------------------------------------------------
    def _build_sft_stream(self):
        from mrgrpo.sft_data import build_sft_stream

        return build_sft_stream(
            self.cfg.data.sft_sources,
            self.cfg.sft,
            self.cfg.rl.sft_aux_batch_size,
            self.cfg.train.seed,
            resolve_path=self.cfg.resolve_path,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )

    # -- 5: advantages ---------------------------------------------------------------------------
    def advantages(self, scored: ScoredRewards, group_ids: torch.Tensor) -> torch.Tensor:
        rl = self.cfg.rl
        adv = compute_advantages(
            scored.scores,
            scored.weights,
            group_ids,
            mode=rl.adv_mode,
            eps=rl.adv_eps,
            clip=rl.adv_clip,
            valid=scored.valid,
            reduce_fn=accelerate_sum_reduce(self.accelerator) if self.accelerator.num_processes > 1 else None,
        )
        return -adv if rl.flip_advantage_sign else adv

    # -- 6: training --------------------------------------------------------------------------------
    def train_on(self, step: int, batch: RolloutBatch, adv: torch.Tensor) -> dict[str, float]:
        """Train on the rollout (step 6): ``rl.inner_epochs`` passes, each of ``train.updates_per_rollout``
        optimizer steps (:mod:`mrgrpo.updates`); the LR schedule then steps once."""
        rl = self.cfg.rl
        traj = batch.traj
        adv = adv.to(self.device)
        seed = self.cfg.train.seed
        sample_seeds = [derive_seed(seed, SeedStream.TRAIN_TIMESTEPS, step, sid) for sid in batch.sample_ids]
        train_steps = choose_train_steps(traj.sde_steps, rl.timestep_fraction, sample_seeds).to(self.device)
        velocity = self._velocity_fn(self.model)
        ref_velocity = self._reference_velocity_fn()
        sigma_max = float(traj.sigmas[1])
        stats = StepLossStats()
        grad_norms: list[float] = []
        for epoch in range(rl.inner_epochs):
            plan = plan_updates(
                self.cfg.train.updates_per_rollout, self.layout, self.G, train_order_rng(seed, step, epoch)
            )
            conds: dict[int, tuple] = {}
            for u, passes in enumerate(plan):
                for p_i, tp in enumerate(passes):
                    idx = torch.from_numpy(tp.samples).to(self.device)
                    if tp.micro_batch not in conds:
                        conds = {
                            tp.micro_batch: (
                                batch.cond.select(idx.cpu()),
                                batch.uncond.select(idx.cpu()) if batch.uncond is not None else None,
                            )
                        }
                    cond_mb, uncond_mb = conds[tp.micro_batch]
                    with self.accelerator.accumulate(self.model):
                        t_idx = train_steps[idx, tp.column]
                        x_t, x_next, old_log_prob = traj.at(idx, t_idx)
                        s = traj.sigmas[t_idx]
                        s_next = traj.sigmas[t_idx + 1]
                        with self.autocast():
                            v = guided_velocity(velocity, x_t, s, cond_mb, uncond_mb, rl.cfg_scale)
                        step_out = sde_step_with_logprob(
                            x_t,
                            v.float(),
                            s,
                            s_next,
                            sampler=rl.sampler,
                            noise_level=rl.noise_level,
                            prev_sample=x_next,
                            sigma_max=sigma_max,
                            cps_logprob=rl.cps_logprob,
                        )
                        kl = None
                        if rl.beta > 0:
                            with torch.no_grad(), self.policy.reference(), self.autocast():
                                v_ref = guided_velocity(ref_velocity, x_t, s, cond_mb, uncond_mb, rl.cfg_scale).float()
                            if rl.kl_type == "velocity":
                                kl = velocity_kl(v.float(), v_ref, step_out.std)
                            else:
                                ref_mean, _ = step_mean_std(
                                    x_t,
                                    v_ref,
                                    s,
                                    s_next,
                                    sampler=rl.sampler,
                                    noise_level=rl.noise_level,
                                    sigma_max=sigma_max,
                                )
                                kl = mean_kl(step_out.mean, ref_mean, step_out.std)
                        l_sft = None
                        sft_due = self.sft_stream is not None and step % rl.sft_aux_every == 0
                        if rl.sft_aux_coef > 0 and p_i == 0 and sft_due:
                            l_sft = self._sft_loss(step, epoch * len(plan) + u)
                        out = mrgrpo_step_loss(
                            step_out.log_prob,
                            old_log_prob,
                            adv[idx],
                            clip_range=rl.clip_range,
                            kl=kl,
                            beta=rl.beta,
                            sft_loss=l_sft,
                            sft_coef=rl.sft_aux_coef,
                            accumulation_steps=self.accum,
                        )
                        stats.add(out)
                        self.backward_and_maybe_step(out.loss, grad_norms, step_scheduler=False)
        self.lr_scheduler.step()  # once per rollout: the schedule counts steps (rollouts), not updates
        metrics = stats.metrics()
        if grad_norms:
            metrics["grad_norm"] = float(np.mean(grad_norms))
        return metrics

    def _reference_velocity_fn(self) -> Callable:
        """The velocity of ``policy.reference()``, run where the reference lives (``rl.reference_device``):
        inputs are moved there and the velocity comes back on the trainer's device."""
        if self.cfg.rl.reference_device == "same":
            return self._velocity_fn(self.policy)
        where = self.policy.reference_device

        def fn(x, sigma, cond):
            return self.policy("velocity", x.to(where), sigma.to(where), cond.to(where)).to(self.device)

        return fn

    def _sft_loss(self, step: int, update: int) -> torch.Tensor:
        """The auxiliary flow-matching loss of the next SFT batch (noise from ``(seed, step, update, rank)``)."""
        if self.sft_stream is None:
            raise RuntimeError("the auxiliary SFT loss needs rl.sft_aux_coef > 0 and data.sft_sources")
        sft_batch = next(self.sft_stream)
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.cfg.train.seed, SeedStream.SFT_NOISE, step, update, self.accelerator.process_index)
        )
        with self.autocast():
            return flow_matching_step_loss(self.model, sft_batch, generator=gen)

    # -- metrics -----------------------------------------------------------------------------------
    def _global_reward_metrics(
        self, scored: ScoredRewards, adv: torch.Tensor, prefix: str = "reward", group_ids: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Global (all-process) means: per reward over its valid images, ``<prefix>/mean`` = the mean over
        images of each image's mixture-weighted reward (over its valid rewards), invalid fractions, advantage std;
        with ``group_ids``, ``zero_std_frac`` (groups whose weighted rewards are all equal: no learning signal)
        and ``<prefix>/<name>/zero_std_frac`` (the same for each reward, over the groups it scores)."""
        acc = self.accelerator
        names = scored.names
        w = scored.weights
        rows = []
        for j, name in enumerate(names):
            considered = w[:, j] > 0
            v = scored.valid[name] & considered
            s = scored.scores[name].double()
            rows.append(torch.stack([(s * v).sum(), v.sum().double(), considered.sum().double()]))
        valid_w = torch.stack([w[:, j] * scored.valid[k] for j, k in enumerate(names)], dim=1).double()
        mixed = (valid_w * torch.stack([scored.scores[k] for k in names], dim=1).double()).sum(1)
        has = valid_w.sum(1) > 0
        per_image = torch.where(has, mixed / valid_w.sum(1).clamp(min=1e-12), torch.zeros_like(mixed))
        rows.append(torch.stack([per_image.sum(), has.sum().double(), torch.tensor(0.0, dtype=torch.float64)]))
        a = adv.detach().double().cpu()
        rows.append(torch.stack([a.sum(), torch.tensor(float(a.numel()), dtype=torch.float64), (a * a).sum()]))
        if group_ids is not None:  # [zero-std groups, groups] of the weighted reward, then of each reward
            rows.append(_zero_std_counts(per_image, has, group_ids))
            for j, name in enumerate(names):
                scored_here = scored.valid[name] & (w[:, j] > 0)
                rows.append(_zero_std_counts(scored.scores[name].double(), scored_here, group_ids))
        total = torch.stack(rows)
        if acc.num_processes > 1:
            total = acc.reduce(total.to(acc.device), reduction="sum").cpu()
        metrics = {}
        for i, name in enumerate(names):
            ssum, nvalid, nconsidered = total[i].tolist()
            if nvalid > 0:
                metrics[f"{prefix}/{name}"] = ssum / nvalid
            if nconsidered > 0:
                metrics[f"{prefix}/{name}/invalid_frac"] = 1.0 - nvalid / nconsidered
        base = len(names)
        msum, mcount, _ = total[base].tolist()
        if mcount > 0:
            metrics[f"{prefix}/mean"] = msum / mcount
        asum, an, asq = total[base + 1].tolist()
        if prefix == "reward" and an > 1:
            mean = asum / an
            metrics["advantage/mean"] = mean
            metrics["advantage/std"] = math.sqrt(max(0.0, (asq - an * mean * mean) / (an - 1)))
        if group_ids is not None:
            zero, groups, _ = total[base + 2].tolist()
            if groups > 0:
                metrics["zero_std_frac"] = zero / groups
            for i, name in enumerate(names):
                zero, groups, _ = total[base + 3 + i].tolist()
                if groups > 0:
                    metrics[f"{prefix}/{name}/zero_std_frac"] = zero / groups
        return metrics

    def _maybe_dump(self, step: int, batch: RolloutBatch, scored: ScoredRewards, adv: torch.Tensor) -> None:
        if not self.cfg.logging.dump_rollouts:
            return
        d = self.out / "rollouts"
        d.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "sample_ids": batch.sample_ids,
                "group_ids": batch.group_ids,
                "prompts": [r.prompt for r in batch.records],
                "scores": scored.scores,
                "valid": scored.valid,
                "advantages": adv.cpu(),
                "log_probs": batch.traj.log_probs.cpu(),
                "log_prob_steps": list(batch.traj.stored_steps),
            },
            d / f"step-{step:06d}.rank-{self.accelerator.process_index}.pt",
        )

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        if not self.eval_sources:
            return {}
        rl = self.cfg.rl
        ev = self.cfg.eval
        prompts = [r for s in self.eval_sources for r in s.records][: ev.prompts]
        all_records = [r for r in prompts for _ in range(ev.samples_per_prompt)]  # each copy: its own noise index
        sl = rank_slice(len(all_records), self.accelerator.process_index, self.accelerator.num_processes)
        records = all_records[sl]
        if not records:
            return {}
        with torch.no_grad(), self.autocast():
            enc = self.policy.encode(
                self._fit_prompts(records)[0],
                self._load_ref_images(records),
                negative_prompt=rl.negative_prompt if ev.cfg_scale > 1 else None,
            )
        gens = sample_generators(
            self.cfg.train.seed,
            0,
            range(sl.start, sl.start + len(records)),
            device=self.device,
            stream=SeedStream.EVAL_NOISE,
        )
        noise = torch.cat([self.policy.init_noise(1, rl.height, rl.width, g) for g in gens]).to(self.device)
        final = sample_ode(
            self._velocity_fn(self.policy),
            noise,
            self.policy.sigmas(ev.num_steps, rl.height, rl.width).to(self.device),
            enc.cond,
            uncond=enc.uncond,
            cfg_scale=ev.cfg_scale,
            autocast=self.autocast,
        )
        with torch.no_grad(), self.autocast():
            pixels = self.policy.decode(final).float().cpu()
        scored = self.score(
            pixels, records, torch.arange(sl.start, sl.start + len(records)), mixtures=self.eval_mixtures, per_prompt=1
        )
        if self.tracker is not None:
            self.tracker.save_samples(
                step, pixels, nrow=min(8, len(records)), captions=[r.prompt for r in records], name="eval"
            )
        return self._global_reward_metrics(scored, torch.zeros(len(records)), prefix="eval")

    # -- checkpoints ----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        sft = (
            self.sft_stream.state_dict()
            if self.sft_stream is not None and hasattr(self.sft_stream, "state_dict")
            else None
        )
        return {"sampler": self.sampler.state_dict(), "sft_stream": sft}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if state.get("sft_stream") is not None and self.sft_stream is not None:
            self.sft_stream.load_state_dict(state["sft_stream"])

    # -- the loop -----------------------------------------------------------------------------------
    def run_phases(self, step: int) -> tuple[RolloutBatch, ScoredRewards, torch.Tensor, dict[str, float]]:
        """Rollout, rewards, advantages and training of one step, timed.

        Returns the rollout batch, the scores, the advantages ``[N]`` and the training metrics with
        ``time/*`` entries (also what ``benchmarks/step_time.py`` measures).
        """
        t0 = time.perf_counter()
        batch, scored, reward_times = self.rollout_and_score(step)
        t1 = time.perf_counter()
        adv = self.advantages(scored, batch.group_ids)
        t2 = time.perf_counter()
        metrics = self.train_on(step, batch, adv)
        t3 = time.perf_counter()
        metrics.update(batch.times)
        metrics["data/prompts_truncated"] = batch.prompts_truncated
        if batch.sde_window is not None:
            metrics["rollout/sde_window_start"] = batch.sde_window[0]
        metrics.update(
            {
                "time/reward": reward_times["time/reward"] + (t2 - t1),
                "time/reward_busy": reward_times["time/reward_busy"],
                "time/train": t3 - t2,
                "time/step": t3 - t0,
            }
        )
        for key in ("encode", "rollout", "decode", "reward", "train", "step"):  # this process's images
            metrics[f"ms_per_image/{key}"] = 1000.0 * metrics[f"time/{key}"] / len(batch)
        return batch, scored, adv, metrics

    def step_once(self, step: int) -> dict[str, float]:
        """One MR-GRPO step: :meth:`run_phases`, metrics; evaluation and sample grids when due."""
        cfg = self.cfg
        batch, scored, adv, train_metrics = self.run_phases(step)
        metrics = self._global_reward_metrics(scored, adv, group_ids=batch.group_ids)
        metrics.update(train_metrics)
        metrics.update({"lr": float(self.lr_scheduler.get_last_lr()[0]), "optimizer_steps": self.optimizer_steps})
        for name, f in scored.failures.items():
            if f:
                metrics[f"reward/{name}/failures"] = f
        self._maybe_dump(step, batch, scored, adv)
        if step % cfg.eval.every == 0 or step == cfg.train.max_steps:
            metrics.update(self.evaluate(step))
        if step % cfg.logging.sample_every == 0 or step == 1:
            G = self.G
            self.run_tracker.save_samples(
                step,
                batch.pixels[: min(4, len(batch.records)) * G],
                nrow=G,
                captions=[r.prompt for r in batch.records[:4]],
            )
        return metrics

    def fit(self) -> list[dict[str, float]]:
        """Train until ``train.max_steps`` (resuming if asked); returns the per-step metrics."""
        return self.run_loop(
            self.step_once,
            desc="MR-GRPO",
            plot=self.tracker_plot,
            postfix=lambda m: {
                "reward": f"{m.get('reward/mean', float('nan')):.4f}",
                "step_s": f"{m['time/step']:.2f}",
            },
        )

    def start_metrics(self) -> dict[str, float]:
        """``eval.on_start``: the held-out evaluation of the starting policy, logged as step 0."""
        return self.evaluate(0) if self.cfg.eval.on_start else {}

    def tracker_plot(self) -> None:
        self.run_tracker.plot()

    def close(self) -> None:
        """Release the background scorer and the rewards (their thread pool and clients); called when the run ends."""
        self.close_rollout_phase()
        self.rewards.close()


def train(cfg: RunConfig) -> int:
    """Entry point of ``mrgrpo train`` for ``stage: rl``."""
    trainer = GRPOTrainer(cfg)
    try:
        trainer.fit()
    finally:
        destroy_process_group()
    return 0
