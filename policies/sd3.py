"""Plain SD3 / SD3.5 as a policy, from diffusers' own components (proves a second policy plugs in).

Prompts are encoded by ``StableDiffusion3Pipeline.encode_prompt`` (CLIP-L + CLIP-G + T5), the
DiT is ``SD3Transformer2DModel``, the VAE ``AutoencoderKL``. Text-to-image only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mrgrpo.policies.base import Conditioning, EncodedPrompts
from mrgrpo.policies.common import resolve_dtype
from mrgrpo.policies.dit_policy import DiTPolicy

if TYPE_CHECKING:
    from mrgrpo.sft_data.batch import SFTBatch


class SD3Policy(DiTPolicy):
    """SD3 / SD3.5 from a diffusers pipeline folder or hub id.

    Args:
        pretrained: pipeline folder or id (``stabilityai/stable-diffusion-3.5-medium``).
        dtype: dtype of the frozen parts (text encoders, VAE, and the DiT until it trains).
        max_sequence_length: T5 tokens.
    """

    family = "sd3"

    pipe: Any  # the diffusers pipeline (untyped for mypy), kept outside the module tree

    def __init__(
        self,
        pretrained: str,
        dtype: str = "bfloat16",
        max_sequence_length: int = 256,
        timestep_shift: float | None = None,
        policy_name: str = "sd3",
        policy_kwargs: dict | None = None,
    ):
        super().__init__()
        from diffusers import StableDiffusion3Pipeline

        self.frozen_dtype = resolve_dtype(dtype)
        pipe = StableDiffusion3Pipeline.from_pretrained(pretrained, torch_dtype=self.frozen_dtype)
        self.transformer, self.vae, self.scheduler = pipe.transformer, pipe.vae, pipe.scheduler
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = (
            pipe.text_encoder,
            pipe.text_encoder_2,
            pipe.text_encoder_3,
        )
        object.__setattr__(self, "pipe", pipe)  # shares the modules above; not registered twice
        self.max_sequence_length = max_sequence_length
        self.timestep_shift = timestep_shift or float(self.scheduler.config.get("shift", 3.0))
        self.latent_channels = self.transformer.config.in_channels
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.policy_name, self.policy_kwargs = policy_name, dict(policy_kwargs or {})
        self.set_stage("rl")

    def encode(
        self, prompts: list[str], images: list[list[Any]] | None = None, *, negative_prompt: str | None = None
    ) -> EncodedPrompts:
        """CLIP-L + CLIP-G + T5 (diffusers' ``encode_prompt``): ``context [B, 77 + T5, 4096]``, ``pooled [B, 2048]``.

        With ``negative_prompt`` the negatives are encoded in the same batch as the prompts.
        """
        if images is not None and any(images):
            raise ValueError(
                "the sd3 policy is text-to-image only: it takes no reference images (use deepgen for editing)"
            )
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        n = len(prompts)
        texts = list(prompts) + ([negative_prompt] * n if negative_prompt is not None else [])
        with torch.no_grad():
            pe, _, pooled, _ = self.pipe.encode_prompt(
                prompt=texts,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
        both = Conditioning({"context": pe, "pooled": pooled})
        if negative_prompt is None:
            return EncodedPrompts(both)
        return EncodedPrompts(both.select(slice(0, n)), both.select(slice(n, 2 * n)))

    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        ref_latents: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """DiT velocity ``[B, C, h, w]`` at ``sigma [B]`` (timestep = sigma * 1000)."""
        if ref_latents or cond.items.get("ref_latents"):
            raise ValueError("the sd3 policy takes no reference latents (it is text-to-image only)")
        if len(cond) != latents.shape[0]:
            raise ValueError(
                f"conditioning holds {len(cond)} samples for {latents.shape[0]} latents (use cond.repeat(G))"
            )
        dit = self.active_transformer()
        dtype = next(dit.parameters()).dtype
        return dit(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=cond.tensors["context"].to(latents.device, dtype),
            pooled_projections=cond.tensors["pooled"].to(latents.device, dtype),
            timestep=(sigma.to(latents.device).float() * 1000).to(dtype),
        ).sample

    def flow_matching_loss(self, batch: SFTBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.dit_flow_matching_loss(batch, generator, references=False)

    def set_stage(self, stage: str, lora: dict | None = None) -> None:
        """Only the DiT trains (``rl`` and ``sft``; ``pretrain`` has nothing to pre-train here)."""
        self.set_dit_only_stage(stage, lora, "its text encoders are frozen")

    def load(self, path: str) -> None:
        """A folder written by :meth:`save`, or a flat DiT state dict (``transformer.<name>`` or bare diffusers
        names)."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"sd3 weights {path} do not exist")
        super().load(path)


def build_sd3(pretrained: str = "stabilityai/stable-diffusion-3.5-medium", **kwargs: Any) -> SD3Policy:
    return SD3Policy(pretrained, policy_name="sd3", policy_kwargs={"pretrained": pretrained, **kwargs}, **kwargs)


def build_tiny_sd3(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random-init toy SD3 pipeline (3 tiny text encoders, DiT, VAE) to ``out_dir``."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from mrgrpo.policies.tiny_models import byte_level_tokenizer, publish_dir, tiny_vae

    torch.manual_seed(seed)
    tok = byte_level_tokenizer()
    tok.model_max_length = 77
    clip = {
        "vocab_size": len(tok),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "projection_dim": 16,
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.pad_token_id,
    }
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=32,
            pos_embed_max_size=16,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip)),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip)),
        tokenizer_2=tok,
        text_encoder_3=T5EncoderModel(
            T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2)
        ),
        tokenizer_3=tok,
    )
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-sd3-", dir=out.parent))
    pipe.save_pretrained(tmp)
    publish_dir(tmp, out)
    return out


def tiny_sd3(seed: int = 0, cache_dir: str | None = None, **kwargs: Any) -> SD3Policy:
    """Registry factory of ``sd3-tiny``: built once into a cache folder, loaded like a real pipeline."""
    from mrgrpo.policies.tiny_models import tiny_cache_root

    path = Path(cache_dir) if cache_dir else tiny_cache_root() / f"sd3-v1-seed{seed}"
    if not (path / "model_index.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_sd3(path, seed)
    return SD3Policy(
        str(path),
        dtype="float32",
        max_sequence_length=32,
        policy_name="sd3-tiny",
        policy_kwargs={"seed": seed, "cache_dir": cache_dir, **kwargs},
        **kwargs,
    )
