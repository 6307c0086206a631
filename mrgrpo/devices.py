"""Device-safe random draws: the one place where noise meets a device.

A ``torch.Generator`` lives on one device and can only fill tensors on that device
(``torch.randn(..., generator=cuda_gen)`` without ``device=`` fails with "Expected a 'cpu' device
type for generator but found 'cuda'"). Every draw the trainers and policies make goes through
these helpers: the noise is drawn on the generator's own device (so it is a function of the
generator's seed alone, whatever device the model runs on) and then moved to the target device.

Generators made by :func:`mrgrpo.rollout.sample_generators` live on the policy's device; SFT
and sampling generators may be CPU ones. Both work everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def generator_device(generator: torch.Generator | None, default: torch.device | str = "cpu") -> torch.device:
    """The device a generator draws on (``default`` without a generator)."""
    return torch.device(generator.device) if generator is not None else torch.device(default)


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn on ``generator``'s device, returned on ``device``."""
    src = generator_device(generator, device)
    return torch.randn(tuple(shape), generator=generator, device=src, dtype=dtype).to(device)


def rand(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``U[0, 1)`` samples of ``shape``, drawn on ``generator``'s device, returned on ``device``."""
    src = generator_device(generator, device)
    return torch.rand(tuple(shape), generator=generator, device=src, dtype=dtype).to(device)


def randn_per_sample(
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[len(generators), *shape]`` noise, row ``i`` drawn from ``generators[i]`` (each on its own device)."""
    return torch.stack([randn(shape, g, device=device, dtype=dtype) for g in generators])
