"""Fixtures of the policy tests: tiny models built once per session into a temporary cache."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One cache folder per test session for the tiny model files (built once, loaded many times)."""
    path = tmp_path_factory.mktemp("mrgrpo-cache")
    old = os.environ.get("MRGRPO_CACHE")
    os.environ["MRGRPO_CACHE"] = str(path)
    yield Path(path)
    if old is None:
        os.environ.pop("MRGRPO_CACHE", None)
    else:
        os.environ["MRGRPO_CACHE"] = old


@pytest.fixture
def build(tiny_cache):
    """``build(name, **kwargs)``: a registered policy, seeded, in eval mode (no LoRA dropout)."""
    from mrgrpo.registry import POLICIES

    def make(name, **kwargs):
        torch.manual_seed(0)
        return POLICIES.build(name, **kwargs).eval()

    return make


@pytest.fixture
def latents():
    """``latents(n, seed=0, size=64)``: seeded ``[n, 16, size/8, size/8]``."""

    def make(n, seed=0, size=64):
        return torch.randn(n, 16, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))

    return make


@pytest.fixture
def perturb():
    """``perturb(policy, scale)``: add seeded noise to every trainable parameter (and give the zero-initialised
    DeepGen projectors values, so the prompt reaches the DiT)."""

    def run(policy, scale=0.05, seed=1):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in policy.trainable_parameters():
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))

    return run


@pytest.fixture
def open_projectors():
    """DeepGen's projector_2/3 start at zero (as released): give them values so the prompt matters."""

    def run(policy, seed=2):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for proj in (policy.projector_2, policy.projector_3):
                proj.weight.copy_(0.2 * torch.randn(proj.weight.shape, generator=g))

    return run
