"""FLUX.1 (dev: text-to-image; Kontext: editing with a reference image) as a policy, on diffusers' own parts.

Conditioning as diffusers' ``FluxPipeline`` / ``FluxKontextPipeline`` build it:

* CLIP-L's pooled output ``pooled [B, 768]`` and T5-XXL's sequence ``context [B, L, 4096]`` (padded
  to ``max_sequence_length``, no attention mask), through the pipeline's own ``encode_prompt``;
* the distilled guidance embedding (``guidance_scale``, FLUX.1-dev 3.5, Kontext 2.5) fed to the DiT
  with every call: no CFG batch (CFG on top, "true CFG", still works when a recipe asks for it);
* latents ``[B, 16, h, w]`` packed into 2x2 patches ``[B, hw/4, 64]`` with position ids
  ``(0, row, col)`` per patch and zeros for the text tokens;
* Kontext: the reference image, resized (``reference_size``), VAE-encoded (posterior mode, shifted
  and scaled) and packed the same way with position ids ``(1, row, col)``, is appended after the
  target's tokens; only the target's tokens are read back;
* sigmas: ``linspace(1, 1/N, N)`` shifted by the scheduler's dynamic shift ``mu`` (linear in the
  number of packed target tokens: 0.5 at 256 tokens, 1.15 at 4096), i.e. ``k t / (1 + (k - 1) t)``
  with ``k = exp(mu)``, then a final 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mrgrpo.policies.base import Conditioning, EncodedPrompts, images_to_tensor
from mrgrpo.policies.common import resolve_dtype
from mrgrpo.policies.dit_policy import DiTPolicy
from mrgrpo.policies.packed_latents import dynamic_shift_mu, pack_latents, patch_ids, shifted_sigmas, unpack_latents

if TYPE_CHECKING:
    from mrgrpo.sft_data.batch import SFTBatch

#: released guidance-embedding scales: FLUX.1-dev 3.5, FLUX.1-Kontext-dev 2.5 (the pipelines' defaults)
DEV_GUIDANCE, KONTEXT_GUIDANCE = 3.5, 2.5


def kontext_size(width: int, height: int, pixels: int | None) -> tuple[int, int]:
    """Reference size for Kontext: the closest released Kontext resolution by aspect (``pixels=None``, as the
    pipeline's auto-resize), or about ``pixels**2`` pixels keeping the aspect; sides floored to multiples of 16."""
    if pixels is None:
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        aspect = width / height
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    else:
        scale = (pixels * pixels / (width * height)) ** 0.5
        width, height = round(width * scale), round(height * scale)
    return max(16, width // 16 * 16), max(16, height // 16 * 16)


class FluxPolicy(DiTPolicy):
    """FLUX.1-dev / FLUX.1-Kontext-dev from a diffusers pipeline folder or hub id.

    Args:
        pretrained: pipeline folder or id (``black-forest-labs/FLUX.1-dev``, ``black-forest-labs/FLUX.1-Kontext-dev``).
        dtype: dtype of the frozen parts (text encoders, VAE, and the DiT until it trains).
        guidance_scale: the distilled guidance fed to the DiT (default: 3.5 for dev, 2.5 for Kontext).
        max_sequence_length: T5 tokens (pipeline default 512; flow_grpo trains with 128).
        resolution: image side the schedule's dynamic shift is computed for when :meth:`sigmas` gets no size
            (the recipe's ``rl.height`` / ``rl.width``), and of the SFT noise law's shift.
        editing: whether the model takes a reference image (default: the folder holds a Kontext pipeline).
        reference_size: Kontext references resized to about ``reference_size**2`` pixels; None = the pipeline's
            auto-resize to the closest released Kontext resolution (about 1 MP).
    """

    family = "flux"
    model_label = "FLUX"

    pipe: Any  # the diffusers pipeline (untyped for mypy), kept outside the module tree

    def __init__(
        self,
        pretrained: str,
        dtype: str = "bfloat16",
        guidance_scale: float | None = None,
        max_sequence_length: int = 512,
        resolution: int = 512,
        editing: bool | None = None,
        reference_size: int | None = None,
        policy_name: str = "flux",
        policy_kwargs: dict | None = None,
    ):
        super().__init__()
        from diffusers import DiffusionPipeline, FluxTransformer2DModel

        self.frozen_dtype = resolve_dtype(dtype)
        pipe = DiffusionPipeline.from_pretrained(pretrained, torch_dtype=self.frozen_dtype)
        if not isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel):
            raise ValueError(
                f"{pretrained} is not a FLUX pipeline (its transformer is "
                f"{type(getattr(pipe, 'transformer', None)).__name__})"
            )
        kontext = "Kontext" in type(pipe).__name__
        self.supports_editing = kontext if editing is None else bool(editing)
        self.transformer, self.vae, self.scheduler = pipe.transformer, pipe.vae, pipe.scheduler
        self.text_encoder, self.text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2
        object.__setattr__(self, "pipe", pipe)  # shares the modules above; not registered twice
        self.guidance_scale = float(
            guidance_scale if guidance_scale is not None else (KONTEXT_GUIDANCE if kontext else DEV_GUIDANCE)
        )
        self.max_sequence_length = int(max_sequence_length)
        self.resolution = int(resolution)
        self.reference_size = reference_size
        self.latent_channels = self.transformer.config.in_channels // 4
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.timestep_shift = (
            float(np.exp(dynamic_shift_mu(self._tokens(self.resolution, self.resolution), self.scheduler.config)))
            if self.scheduler.config.get("use_dynamic_shifting", False)
            else float(self.scheduler.config.get("shift", 1.0))
        )
        self.vae.requires_grad_(False).eval()
        self.policy_name, self.policy_kwargs = policy_name, dict(policy_kwargs or {})
        self.set_stage("rl")

    def _tokens(self, height: int, width: int) -> int:
        """Packed target tokens of an image: ``(H / 16) (W / 16)`` for the 8x VAE."""
        f = 2 * self.vae_scale_factor
        return (height // f) * (width // f)

    # -- conditioning --------------------------------------------------------------------------
    def encode(
        self, prompts: list[str], images: list[list[Any]] | None = None, *, negative_prompt: str | None = None
    ) -> EncodedPrompts:
        """CLIP pooled ``pooled [B, 768]`` + T5 ``context [B, max_sequence_length, 4096]``; Kontext references as
        ``items["ref_latents"]`` (per sample a list of at most one ``[16, h, w]``).

        With ``negative_prompt`` the negatives are encoded in the same batch (true CFG; the references are shared).
        """
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        has_refs = images is not None and any(images)
        if has_refs and not self.supports_editing:
            raise ValueError(
                "this FLUX model is text-to-image only: it takes no reference images (use a FLUX.1-Kontext pipeline)"
            )
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} reference lists for {len(prompts)} prompts")
        n = len(prompts)
        texts = list(prompts) + ([negative_prompt] * n if negative_prompt is not None else [])
        with torch.no_grad():
            context, pooled, _ = self.pipe.encode_prompt(
                prompt=texts,
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length,
            )
        items: dict[str, list[Any]] = {}
        if has_refs and images is not None:
            refs = [self._reference_latents(list(imgs or [])) for imgs in images]
            items["ref_latents"] = refs + (refs if negative_prompt is not None else [])
        both = Conditioning({"context": context, "pooled": pooled}, items)
        if negative_prompt is None:
            return EncodedPrompts(both)
        return EncodedPrompts(both.select(slice(0, n)), both.select(slice(n, 2 * n)))

    def _reference_latents(self, images: list[Any]) -> list[torch.Tensor]:
        """``[]`` or ``[latents [16, h, w]]`` of a Kontext reference (resized, VAE posterior mode, shifted, scaled)."""
        from PIL import Image

        if len(images) > 1:
            raise ValueError(f"FLUX.1-Kontext takes one reference image per prompt, got {len(images)}")
        out = []
        for im in images:
            if not hasattr(im, "convert"):
                raise TypeError(f"reference images must be PIL images, got {type(im).__name__}")
            w, h = kontext_size(im.width, im.height, self.reference_size)
            px = images_to_tensor([im.convert("RGB").resize((w, h), Image.LANCZOS)])
            out.append(self.encode_images(px.to(self.device))[0])
        return out

    # -- denoiser ------------------------------------------------------------------------------
    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        ref_latents: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """DiT velocity ``[B, C, h, w]`` (the DiT's dtype) of ``latents [B, C, h, w]`` at ``sigma [B]``.

        Samples are run in groups of equal reference shape (no padding: FLUX has no attention mask).
        """
        return self.velocity_by_reference_shape(latents, sigma, cond, ref_latents, self._dit)

    def _dit(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, refs: list[torch.Tensor] | None
    ) -> torch.Tensor:
        dit = self.active_transformer()
        dtype = next(dit.parameters()).dtype
        device = latents.device
        _, _, h, w = latents.shape
        tokens = pack_latents(latents.to(dtype))
        ids = patch_ids(h, w)
        if refs is not None:
            ref = torch.stack([r.to(device, dtype) for r in refs])
            tokens = torch.cat([tokens, pack_latents(ref)], dim=1)
            ids = torch.cat([ids, patch_ids(ref.shape[-2], ref.shape[-1], index=1)])
        context = cond.tensors["context"].to(device, dtype)
        guidance = None
        if dit.config.guidance_embeds:
            guidance = torch.full((latents.shape[0],), self.guidance_scale, device=device, dtype=torch.float32)
        out = dit(
            hidden_states=tokens,
            timestep=sigma.to(device).float().to(dtype),
            guidance=guidance,
            pooled_projections=cond.tensors["pooled"].to(device, dtype),
            encoder_hidden_states=context,
            txt_ids=torch.zeros(context.shape[1], 3, device=device, dtype=dtype),
            img_ids=ids.to(device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out[:, : (h // 2) * (w // 2)], h, w)

    def sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """``[num_steps + 1]`` float32 from 1 to 0 with the dynamic shift of an ``height x width`` image
        (default: ``resolution`` square)."""
        return shifted_sigmas(
            self.scheduler, num_steps, self._tokens(height or self.resolution, width or self.resolution)
        )

    # -- training ------------------------------------------------------------------------------
    def flow_matching_loss(self, batch: SFTBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """SFT loss on an :class:`~mrgrpo.sft_data.batch.SFTBatch` (``images [B, 3, H, W]`` in [0, 1], ``B`` prompts,
        ``ref_images`` ``[B][<=1]`` PIL or None).

        Noise and ``sigma`` (shift ``timestep_shift`` = exp(mu) at ``resolution``) come from ``generator``
        (drawn on its own device).
        """
        return self.dit_flow_matching_loss(batch, generator)

    def set_stage(self, stage: str, lora: dict | None = None) -> None:
        """Only the DiT trains (``sft`` and ``rl``; the text encoders stay frozen, so ``pretrain`` is refused)."""
        self.set_dit_only_stage(stage, lora, "its text encoders are frozen")

    # -- sampling ------------------------------------------------------------------------------
    def generate(  # the defaults of this model; the sampling is DiTPolicy.generate
        self,
        prompts: list[str],
        images: list[list[Any]] | None = None,
        *,
        num_steps: int = 28,
        cfg_scale: float = 1.0,
        height: int = 512,
        width: int = 512,
        generator: torch.Generator | None = None,
        negative_prompt: str = "",
    ) -> list[Any]:
        """Euler ODE sampling with the guidance embedding (``cfg_scale`` > 1 adds true CFG); B PIL images."""
        return super().generate(
            prompts,
            images,
            num_steps=num_steps,
            cfg_scale=cfg_scale,
            height=height,
            width=width,
            generator=generator,
            negative_prompt=negative_prompt,
        )

    def load(self, path: str) -> None:
        """A folder written by :meth:`save`, or a flat DiT state dict (``transformer.<name>`` or bare names)."""
        if not Path(path).exists():
            raise FileNotFoundError(f"flux weights {path} do not exist")
        super().load(path)


def build_flux(pretrained: str = "black-forest-labs/FLUX.1-dev", **kwargs: Any) -> FluxPolicy:
    """Registry factory of ``flux``: FLUX.1-dev, or Kontext (``pretrained=black-forest-labs/FLUX.1-Kontext-dev``)."""
    return FluxPolicy(pretrained, policy_name="flux", policy_kwargs={"pretrained": pretrained, **kwargs}, **kwargs)
