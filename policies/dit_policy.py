"""What every VAE + flow-matching-DiT policy shares: latents <-> pixels, sigmas, DiT LoRA,
the reference model, and saving the trained weights. Subclasses set ``transformer``, ``vae``,
``scheduler``, ``frozen_dtype``, ``policy_name``, ``policy_kwargs`` and implement encoding and velocity.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Iterator

import torch

from mrgrpo.policies.base import DiffusionPolicy

DIT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class DiTPolicy(DiffusionPolicy):
    """Base of policies made of a diffusers VAE, a flow-matching DiT and a FlowMatch scheduler."""

    dit_lora: dict | None = None
    _ref_transformer = None
    _use_reference = False
    stage: str | None = None

    def init_noise(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.transformer.config
        largest = cfg.pos_embed_max_size * cfg.patch_size * self.vae_scale_factor
        if max(height, width) > largest:
            raise ValueError(f"{height}x{width} is larger than this DiT's position grid allows ({largest} px per side); use a smaller size")
        return super().init_noise(batch, height, width, generator)

    # -- latents <-> pixels ------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        x = latents.to(self.vae.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        return (self.vae.decode(x).sample.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        dist = self.vae.encode(images.to(self.vae.device, self.vae.dtype) * 2 - 1).latent_dist
        return ((dist.mode() - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).float()

    def sigmas(self, num_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.float().cpu()

    def active_transformer(self):
        """The DiT to run: the frozen reference copy inside :meth:`reference`, else the trained one."""
        if self._use_reference and self._ref_transformer is not None:
            return self._ref_transformer
        return self.transformer

    # -- DiT training -------------------------------------------------------------------------
    def train_dit(self, lora: dict | None) -> None:
        """Make the DiT trainable: a LoRA on it when ``lora`` is given, else all of it (float32)."""
        if not lora:
            self.transformer.float().requires_grad_(True)
            return
        from peft import LoraConfig

        if self.dit_lora is None:
            config = LoraConfig(r=lora.get("rank", 32), lora_alpha=lora.get("alpha", 64), lora_dropout=lora.get("dropout", 0.0),
                                init_lora_weights="gaussian", target_modules=list(lora.get("target_modules") or DIT_LORA_TARGETS))
            self.transformer.add_adapter(config)
            self.dit_lora = dict(lora)
            self.train(self.training)  # new LoRA modules (dropout) follow the policy's train/eval mode
        for n, p in self.transformer.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)

    def enable_reference(self) -> None:
        """A frozen copy of the DiT when all of it trains; LoRA policies disable their adapters instead."""
        if self.dit_lora is None and self._ref_transformer is None:
            ref = copy.deepcopy(self.transformer).requires_grad_(False).to(self.frozen_dtype)
            object.__setattr__(self, "_ref_transformer", ref)  # not a submodule: DDP, optimizers, state dicts skip it

    @contextlib.contextmanager
    def reference(self) -> Iterator["DiTPolicy"]:
        if self.dit_lora is not None:
            self.transformer.disable_adapters()
            try:
                yield self
            finally:
                self.transformer.enable_adapters()
            return
        if self._ref_transformer is None:
            raise RuntimeError("reference() needs enable_reference() first (the trainer calls it when rl.beta > 0)")
        self._ref_transformer.to(self.device)
        self._use_reference = True
        try:
            yield self
        finally:
            self._use_reference = False

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], images: list[list[Any]] | None = None, *, num_steps: int = 50, cfg_scale: float = 4.0,
                 height: int = 512, width: int = 512, generator: torch.Generator | None = None, negative_prompt: str = "") -> list[Any]:
        """ODE sampling with CFG (cond + uncond in one batch); returns PIL images."""
        from mrgrpo.policies.base import tensor_to_images
        from mrgrpo.rollout import sample_ode

        enc = self.encode(prompts, images, negative_prompt=negative_prompt if cfg_scale > 1 else None)
        noise = self.init_noise(len(prompts), height, width, generator)
        final = sample_ode(self.velocity, noise, self.sigmas(num_steps).to(self.device), enc.cond, uncond=enc.uncond, cfg_scale=cfg_scale)
        return tensor_to_images(self.decode(final))

    # -- persistence ----------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """Every parameter that currently trains (LoRA weights included), float32 on CPU."""
        return {n: p.detach().float().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def policy_info(self) -> dict[str, Any]:
        return {"name": self.policy_name, "kwargs": self.policy_kwargs, "stage": self.stage, "dit_lora": self.dit_lora}

    def save(self, directory: str) -> None:
        """``model.safetensors`` (trained weights under the model's own key names) + ``policy.json``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file(self.trained_state(), str(d / "model.safetensors"))
        (d / "policy.json").write_text(json.dumps(self.policy_info(), indent=2))
