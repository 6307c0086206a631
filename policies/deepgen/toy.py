"""``deepgen-toy``: the tiny DeepGen for the toy world (32x32 images on CPU).

* :class:`PixelAutoencoder`: an exactly invertible "autoencoder" (2x space-to-depth: ``[3, H, W]``
  -> ``[12, H/2, W/2]``), so reconstruction is exact (PSNR = inf) and nothing has to be trained or
  downloaded; it offers what the policy reads from a diffusers ``AutoencoderKL`` (``config``,
  ``encode().latent_dist.mode()``, ``decode().sample``).
* a 4-layer variant of ``deepgen-tiny``'s VLM and its think tokens (built once into the cache, frozen);
* a 4-layer x 64-dim SD3 DiT (patch 2) on the 12-channel latents;
* timestep shift 1 (sampler and training noise law) instead of SD3's 3: at 32x32 in pixel space, shift 3
  leaves the last of 10 steps to jump from sigma 0.25 to 0 and trains too rarely at low noise (the
  samples stay speckled);
* :class:`ToyDeepGenPolicy`: the ``sft`` stage trains the connector/projectors and the whole DiT with
  the VLM and the think tokens frozen (no VLM LoRA: 2-3x faster on CPU); ``rl`` trains the DiT.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mrgrpo.policies.deepgen.policy import DeepGenPolicy
from mrgrpo.policies.deepgen.tiny import TINY, _scb_kwargs, build_tiny_deepgen, tiny_cache_dir

#: DiT of the toy world: 4 layers x 64 dims (4 heads x 16), patch 2
TOY_DIT = {"dit_layers": 4, "dit_heads": 4, "dit_head_dim": 16, "factor": 2, "shift": 1.0}
#: the frozen VLM: deepgen-tiny's shape with 4 decoder layers (SCB reads hidden states 4..1)
TOY_VLM = {"layers": 4, "scb_layers": [4, 4, 3, 3, 2, 1]}


class PixelAutoencoder(nn.Module):
    """Space-to-depth by ``factor``: pixels ``[B, 3, H, W]`` in [-1, 1] <-> latents ``[B, 3 f^2, H/f, W/f]``.

    Exactly invertible (``decode(encode(x)) == x``). ``config`` mimics ``AutoencoderKL.config``
    (``block_out_channels`` has ``log2(f) + 1`` entries so that the policy's scale factor is ``f``;
    ``scaling_factor = 1``, ``shift_factor = 0``).
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"factor must be a power of two, got {factor}")
        self.factor = factor
        levels = factor.bit_length()  # 2 -> 2 entries (scale 2), 4 -> 3 entries (scale 4)
        self.config = SimpleNamespace(
            block_out_channels=(3,) * levels, latent_channels=3 * factor * factor, scaling_factor=1.0, shift_factor=0.0
        )
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # device / dtype holder

    _anchor: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def encode(self, x: torch.Tensor):
        z = F.pixel_unshuffle(x, self.factor)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: z, sample=lambda generator=None: z))

    def decode(self, z: torch.Tensor):
        return SimpleNamespace(sample=F.pixel_shuffle(z, self.factor))


class ToyDeepGenPolicy(DeepGenPolicy):
    """DeepGen whose ``sft`` stage freezes the VLM and the think tokens (connector + projectors + DiT train),
    with a short text-to-image template (``<|im_start|>{prompt}<|im_end|>``: half the context tokens of the
    chat template, so the DiT's joint attention costs less on CPU)."""

    def prompt_text(self, prompt: str, num_refs: int = 0, ref_tokens=()) -> str:
        if num_refs:
            return super().prompt_text(prompt, num_refs, ref_tokens)
        return f"<|im_start|>{prompt}<|im_end|>"

    def set_stage(self, stage: str, lora: dict | None = None) -> None:
        if stage != "sft":
            super().set_stage(stage, lora)
            return
        if lora and lora.get("enabled", True):
            raise ValueError("deepgen-toy's sft stage trains the whole DiT; a DiT LoRA (train.lora) is for stage rl")
        self.requires_grad_(False)
        for m in self.scb_modules().values():
            m.float().requires_grad_(True)
        self.train_dit(None)
        self.stage = stage
        self.train(self.training)


def _build_dit(seed: int, latent_channels: int, spec: dict[str, Any]):
    from diffusers import SD3Transformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=latent_channels,
            out_channels=latent_channels,
            num_layers=spec["dit_layers"],
            attention_head_dim=spec["dit_head_dim"],
            num_attention_heads=spec["dit_heads"],
            joint_attention_dim=spec.get("joint_dim", TINY["joint_dim"]),
            caption_projection_dim=spec["dit_heads"] * spec["dit_head_dim"],
            pooled_projection_dim=spec.get("pooled_dim", TINY["pooled_dim"]),
            pos_embed_max_size=16,
            qk_norm="rms_norm",
        )


def toy_deepgen(
    seed: int = 0, cache_dir: str | None = None, spec: dict | None = None, pretrained: str | None = None, **kwargs: Any
) -> ToyDeepGenPolicy:
    """Registry factory of ``deepgen-toy`` (see the module docstring).

    Args:
        seed: initialisation seed (VLM files, connector, DiT).
        cache_dir: folder of the tiny VLM files (default: ``deepgen-tiny``'s cache folder for ``seed``).
        spec: overrides of :data:`TOY_DIT` (``dit_layers``, ``dit_heads``, ``dit_head_dim``, ``factor``, ``shift``).
        pretrained: ``"toy-world-sft"`` loads the toy world's SFT policy, trained on first use with
            ``recipes/toy_world/sft.yaml`` and cached under ``$MRGRPO_CACHE/toy_world`` (like the tiny
            model files); None starts from random weights.
        kwargs: :class:`DeepGenPolicy` options (``mask_padding``, ``checkpoint``, ...).
    """
    from pathlib import Path

    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    s = {**TOY_DIT, **(spec or {})}
    path = Path(cache_dir) if cache_dir else tiny_cache_dir(seed, TOY_VLM)
    if not (path / "deepgen_init.safetensors").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_deepgen(path, seed=seed, spec=TOY_VLM)
    vae = PixelAutoencoder(s["factor"])
    modules = {
        "lmm": Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path / "vlm"), dtype=torch.float32),
        "tokenizer": AutoTokenizer.from_pretrained(str(path / "vlm")),
        "transformer": _build_dit(seed, vae.config.latent_channels, s),
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=s["shift"]),
    }
    options = {
        "dtype": "float32",
        "pixel_budget": 32,
        "timestep_shift": s["shift"],
        **_scb_kwargs({**TINY, **TOY_VLM}),
        **kwargs,
    }
    checkpoint = options.pop("checkpoint", None)
    # the think tokens come from the tiny model's initial SCB weights; connector/projectors from init_seed
    policy = ToyDeepGenPolicy(
        "",
        "",
        modules=modules,
        init_seed=seed,
        policy_name="deepgen-toy",
        policy_kwargs={"seed": seed, "cache_dir": cache_dir, "spec": spec, "pretrained": pretrained, **kwargs},
        **options,
    )
    if pretrained is not None:
        if pretrained != "toy-world-sft":
            raise ValueError(f"deepgen-toy: pretrained must be 'toy-world-sft' or null, got {pretrained!r}")
        from mrgrpo.toy_world.pipeline import ensure_sft

        policy.load(str(ensure_sft()))
    if checkpoint:
        policy.load(checkpoint)
    return policy
