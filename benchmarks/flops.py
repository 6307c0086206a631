"""Useful-FLOP accounting of an MR-GRPO step and model FLOP utilisation (MFU) per phase.

"Useful" FLOPs are the denoiser's own: counted once with ``torch.utils.flop_counter`` on one
velocity call of one image at the step's resolution and conditioning (matmuls, convolutions and
attention), then multiplied by the passes a step needs. Recomputation by gradient checkpointing is
not useful work and is not counted, so MFU falls when checkpointing is on.

    rollout:  images x num_steps x (2 with CFG) forwards
    train:    images x trained steps x (2 with CFG) x 3 (forward + backward)
              + images x trained steps x (2 with CFG) reference forwards when beta > 0
"""

from __future__ import annotations

import time

import torch

#: dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity)
SPEC_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "RTX 4090": 165.2}


def spec_peak_tflops(device_name: str) -> float | None:
    """The datasheet bf16 peak of a GPU named ``device_name`` (None when unknown)."""
    for key, value in SPEC_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value
    return None


def measured_matmul_tflops(
    device: torch.device | str = "cuda", n: int = 8192, dtype=torch.bfloat16, repeats: int = 20
) -> float:
    """Achieved TFLOP/s of an ``n x n`` GEMM: the practical ceiling MFU is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def velocity_flops_per_image(policy, latents: torch.Tensor, sigmas: torch.Tensor, cond, autocast) -> float:
    """FLOPs of one ``policy.velocity`` forward on one image (``latents: [N, C, h, w]``, first row used)."""
    from torch.utils.flop_counter import FlopCounterMode

    idx = torch.arange(1)
    with torch.no_grad(), autocast(), FlopCounterMode(display=False) as counter:
        policy.velocity(latents[:1], sigmas[:1], cond.select(idx))
    return float(counter.get_total_flops())


def step_flops(
    flops_per_image: float, *, images: int, num_steps: int, trained_steps: int, cfg: bool, beta: float
) -> dict[str, float]:
    """Useful FLOPs of the rollout and train phases of one step."""
    mult = 2 if cfg else 1
    rollout = flops_per_image * images * num_steps * mult
    train = flops_per_image * images * trained_steps * mult * 3
    if beta > 0:
        train += flops_per_image * images * trained_steps * mult
    return {"rollout": rollout, "train": train, "step": rollout + train}


def mfu(flops: dict[str, float], seconds: dict[str, float], peak_tflops: float) -> dict[str, float]:
    """``useful FLOPs / (seconds x peak)`` per phase (``seconds`` keyed like ``flops``)."""
    return {k: round(flops[k] / (seconds[k] * peak_tflops * 1e12), 4) for k in flops if seconds.get(k)}
