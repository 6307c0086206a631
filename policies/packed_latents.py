"""Packed-latent DiTs (FLUX.1, Qwen-Image): 2x2 latent patches, their position ids, and the dynamic-shift schedule.

Both model families feed their DiT a sequence of 2x2 latent patches (``[B, (h/2)(w/2), 4C]``, channels-major
inside a patch, as diffusers' pipelines pack them) and sample on ``linspace(1, 1/N, N)`` passed through the
scheduler's resolution-dependent shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``: 2x2 patches, channels-major inside a patch (diffusers' order)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX latents need even sides to pack into 2x2 patches, got {h}x{w}")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: ``[B, (h/2)(w/2), 4C]`` -> ``[B, C, h, w]``."""
    b, n, d = tokens.shape
    x = tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def patch_ids(h: int, w: int, index: int = 0) -> torch.Tensor:
    """Position ids ``[(h/2)(w/2), 3]`` float32 of packed ``[C, h, w]`` latents: ``(index, row, col)`` per patch."""
    rows = torch.arange(h // 2, dtype=torch.float32)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2, dtype=torch.float32)[None, :].expand(h // 2, w // 2)
    return torch.stack([torch.full_like(rows, float(index)), rows, cols], dim=-1).reshape(-1, 3)


def dynamic_shift_mu(image_tokens: int, config: Any) -> float:
    """The scheduler's ``mu`` for ``image_tokens`` packed tokens: linear from ``base_shift`` at ``base_image_seq_len``
    to ``max_shift`` at ``max_image_seq_len`` (diffusers' ``calculate_shift``, config defaults of FLUX.1)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (top - base) / (max_len - base_len)
    return float(image_tokens * slope + base - slope * base_len)


def shifted_sigmas(scheduler: Any, num_steps: int, image_tokens: int) -> torch.Tensor:
    """``[num_steps + 1]`` float32 sigmas as FLUX / Qwen-Image pipelines set them: ``linspace(1, 1/N, N)`` through the
    scheduler (dynamic shift ``mu`` when the scheduler uses it, else its static ``shift``; its ``shift_terminal``
    stretch if any), then 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    grid = np.linspace(1.0, 1.0 / num_steps, num_steps)
    if scheduler.config.get("use_dynamic_shifting", False):
        scheduler.set_timesteps(sigmas=grid, mu=dynamic_shift_mu(image_tokens, scheduler.config))
    else:
        scheduler.set_timesteps(sigmas=grid)
    return scheduler.sigmas.float().cpu()
