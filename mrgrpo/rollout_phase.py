"""Steps 1-4 of an MR-GRPO step: prompts, one encode, the rollout in chunks of groups, decode and rewards.

:class:`RolloutPhase` is a part of :class:`mrgrpo.grpo.GRPOTrainer` (which provides the attributes
listed on the class). A rollout samples the process's B*G images in ``rl.rollout_chunks`` chunks of
whole groups (one chunk by default); each chunk is decoded as soon as it is sampled and its rewards
are computed chunk by chunk, so the rewards of a group never depend on which chunks ran
concurrently. With ``rl.overlap_rewards`` the finished chunks are scored in one background thread
while the next chunks are sampled; the scores are the same, only the waiting goes away. A reward
that fails in that thread raises the same error in the trainer's thread (no later than the end of
the rollout), and :meth:`RolloutPhase.close_rollout_phase` shuts the thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from mrgrpo.config import RunConfig
from mrgrpo.prompts import PromptRecord, PromptSampler, rank_slice
from mrgrpo.reward_mixture import RewardMixture, ScoredRewards
from mrgrpo.rollout import RolloutBatch, Trajectories, sample_generators, sample_trajectories
from mrgrpo.sde_window import window_bounds
from mrgrpo.seeding import SeedStream

log = logging.getLogger(__name__)

#: what a finished chunk hands to its scorer: ``(pixels [n, 3, H, W], records, group_ids [n])``
ChunkCallback = Callable[[torch.Tensor, list[PromptRecord], torch.Tensor], None]


def chunk_bounds(n_records: int, chunks: int) -> list[tuple[int, int]]:
    """``[(first, end), ...]`` record ranges of ``chunks`` near-equal chunks (earlier chunks one larger), none empty."""
    chunks = max(1, min(chunks, n_records))
    sizes = [n_records // chunks + (1 if i < n_records % chunks else 0) for i in range(chunks)]
    starts = np.cumsum([0, *sizes]).tolist()
    return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


class RolloutPhase:
    """Rollout and scoring of :class:`~mrgrpo.grpo.GRPOTrainer` (see the module docstring)."""

    # provided by the trainer
    cfg: RunConfig
    G: int
    micro: int
    device: torch.device
    policy: Any
    accelerator: Any
    sampler: PromptSampler
    rewards: RewardMixture
    mixtures: dict[str, dict[str, float]]
    autocast: Callable[[], Any]
    _reward_pool: ThreadPoolExecutor | None = None

    def start_rollout_phase(self) -> None:
        """Open the background scorer when ``rl.overlap_rewards`` asks for one."""
        if self.cfg.rl.overlap_rewards and self._reward_pool is None:
            self._reward_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrgrpo-rewards")

    def close_rollout_phase(self) -> None:
        """Shut the background scorer (pending chunks are cancelled; a running one finishes on its own)."""
        if self._reward_pool is not None:
            self._reward_pool.shutdown(wait=False, cancel_futures=True)
            self._reward_pool = None

    def _velocity_fn(self, model) -> Callable:
        def fn(x, sigma, cond):
            return model("velocity", x.to(self.device), sigma.to(self.device), cond)

        return fn

    def _local_records(self, step: int) -> tuple[list[PromptRecord], int]:
        records = self.sampler.sample(step, self.cfg.prompts_per_step)
        sl = rank_slice(len(records), self.accelerator.process_index, self.accelerator.num_processes)
        return records[sl], sl.start

    def sde_window_of(self, step: int) -> tuple[int, int]:
        """``[start, end)`` of the SDE steps of rollout ``step`` (``rl.sde_window``; the same on every process)."""
        rl = self.cfg.rl
        return window_bounds(rl.sde_window, step, rl.num_steps, self.cfg.train.seed)

    # -- 1-3: encode + rollout ---------------------------------------------------------------
    def rollout(self, step: int, on_chunk: ChunkCallback | None = None) -> RolloutBatch:
        """Encode this process's prompts once, sample G trajectories each in ``rl.rollout_chunks`` chunks of
        groups, decode each chunk and hand it to ``on_chunk`` (steps 1-3)."""
        rl = self.cfg.rl
        records, offset = self._local_records(step)
        G = self.G
        t0 = time.perf_counter()
        prompts, n_cut = self._fit_prompts(records)
        with torch.no_grad(), self.autocast():
            images = self._load_ref_images(records)
            enc = self.policy.encode(prompts, images, negative_prompt=rl.negative_prompt if rl.cfg_scale > 1 else None)
        cond = enc.cond.repeat(G)
        uncond = enc.uncond.repeat(G) if enc.uncond is not None else None
        t_encode = time.perf_counter() - t0

        sample_ids = [(offset + i) * G + j for i in range(len(records)) for j in range(G)]
        gens = sample_generators(
            self.cfg.train.seed, step, sample_ids, device=self.device, stream=SeedStream.ROLLOUT_NOISE
        )
        if rl.shared_noise:
            group_gens = sample_generators(
                self.cfg.train.seed,
                step,
                [offset + i for i in range(len(records))],
                device=self.device,
                stream=SeedStream.GROUP_NOISE,
            )
            noise = torch.cat(
                [self.policy.init_noise(1, rl.height, rl.width, g).repeat(G, 1, 1, 1) for g in group_gens]
            )
        else:
            noise = torch.cat([self.policy.init_noise(1, rl.height, rl.width, g) for g in gens])
        noise = noise.to(self.device)
        sigmas = self.policy.sigmas(rl.num_steps, rl.height, rl.width).to(self.device)
        window = self.sde_window_of(step)
        group_ids = torch.tensor([offset + i for i in range(len(records)) for _ in range(G)], dtype=torch.long)
        bounds = chunk_bounds(len(records), rl.rollout_chunks)
        parts: list[Trajectories] = []
        pixel_parts: list[torch.Tensor] = []
        t_sample = t_decode = 0.0
        for first, end in bounds:
            rows = list(range(first * G, end * G))
            whole = len(bounds) == 1
            t1 = time.perf_counter()
            traj = sample_trajectories(
                self._velocity_fn(self.policy),
                noise if whole else noise[rows],
                sigmas,
                cond if whole else cond.select(rows),
                uncond=uncond if whole or uncond is None else uncond.select(rows),
                cfg_scale=rl.cfg_scale,
                sampler=rl.sampler,
                noise_level=rl.noise_level,
                sde_window=window,
                generators=gens if whole else [gens[i] for i in rows],
                cps_logprob=rl.cps_logprob,
                autocast=self.autocast,
            )
            t2 = time.perf_counter()
            pixels = self._decode(traj.final)
            t3 = time.perf_counter()
            t_sample, t_decode = t_sample + t2 - t1, t_decode + t3 - t2
            parts.append(traj)
            pixel_parts.append(pixels)
            if on_chunk is not None:
                on_chunk(pixels, records[first:end], group_ids[first * G : end * G])
        return RolloutBatch(
            records,
            G,
            cond,
            uncond,
            parts[0] if len(parts) == 1 else Trajectories.concat(parts),
            torch.cat(pixel_parts),
            group_ids,
            sample_ids,
            {"time/encode": t_encode, "time/rollout": t_sample, "time/decode": t_decode},
            prompts_truncated=n_cut,
            sde_window=window,
        )

    def _decode(self, final: torch.Tensor) -> torch.Tensor:
        """Images ``[n, 3, H, W]`` float32 on the CPU of final latents ``[n, C, h, w]``, in micro-batches."""
        with torch.no_grad(), self.autocast():
            return torch.cat(
                [self.policy.decode(final[i : i + self.micro]).float() for i in range(0, final.shape[0], self.micro)]
            ).cpu()

    def _fit_prompts(self, records: Sequence[PromptRecord]) -> tuple[list[str], int]:
        """Prompt texts cut to the policy's ``max_prompt_tokens`` (warned about), and how many were cut."""
        prompts, n_cut = self.policy.truncate_prompts([r.prompt for r in records])
        if n_cut:
            first = next(r.prompt for r, p in zip(records, prompts) if p != r.prompt)[:60]
            log.warning(
                "%d prompt(s) longer than the policy's limit of %s tokens were truncated (first: %r...)",
                n_cut,
                self.policy.max_prompt_tokens,
                first,
            )
        return prompts, n_cut

    def _load_ref_images(self, records: Sequence[PromptRecord]):
        if not any(r.images for r in records):
            return None
        from mrgrpo.imaging import load_image

        return [[load_image(p).convert("RGB") for p in r.images] for r in records]

    # -- 4: rewards -------------------------------------------------------------------------------
    def score(
        self,
        pixels: torch.Tensor,
        records: Sequence[PromptRecord],
        group_ids: torch.Tensor,
        *,
        mixtures: dict[str, dict[str, float]] | None = None,
        per_prompt: int | None = None,
    ) -> ScoredRewards:
        """Score ``pixels [N, 3, H, W]`` (``per_prompt`` consecutive images per record, default G) with
        the reward mixture of each record's source (``mixtures``: source -> mixture, default the training ones)."""
        from mrgrpo.policies.base import tensor_to_images

        mixtures = self.mixtures if mixtures is None else mixtures
        return self.rewards.score(
            tensor_to_images(pixels), records, group_ids, mixtures, self.G if per_prompt is None else per_prompt
        )

    def _timed_score(
        self, pixels: torch.Tensor, records: list[PromptRecord], group_ids: torch.Tensor
    ) -> tuple[ScoredRewards, float]:
        t0 = time.perf_counter()
        return self.score(pixels, records, group_ids), time.perf_counter() - t0

    def rollout_and_score(self, step: int) -> tuple[RolloutBatch, ScoredRewards, dict[str, float]]:
        """Steps 1-4: the rollout and its rewards, chunk by chunk (scored in the background with
        ``rl.overlap_rewards``). Returns the batch, the scores and ``time/reward`` (seconds the trainer
        waited for rewards after the rollout) and ``time/reward_busy`` (seconds spent scoring)."""
        pool = self._reward_pool if self.cfg.rl.overlap_rewards else None
        finished: list[tuple[torch.Tensor, list[PromptRecord], torch.Tensor]] = []
        futures: list[Future] = []

        def on_chunk(pixels: torch.Tensor, records: list[PromptRecord], group_ids: torch.Tensor) -> None:
            if pool is None:
                finished.append((pixels, records, group_ids))
                return
            for f in futures:  # a chunk that already failed stops the rollout now, not at its end
                if f.done() and f.exception() is not None:
                    f.result()
            futures.append(pool.submit(self._timed_score, pixels, records, group_ids))

        try:
            batch = self.rollout(step, on_chunk)
            t0 = time.perf_counter()
            if pool is None:
                results = [self._timed_score(*chunk) for chunk in finished]
            else:
                results = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        waited = time.perf_counter() - t0
        scored = results[0][0] if len(results) == 1 else ScoredRewards.concat([r[0] for r in results])
        return batch, scored, {"time/reward": waited, "time/reward_busy": sum(r[1] for r in results)}


__all__ = ["ChunkCallback", "RolloutPhase", "chunk_bounds"]
