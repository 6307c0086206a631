"""Qwen-Image (text-to-image) and Qwen-Image-Edit (editing with a reference image) as a policy, on diffusers' parts.

Conditioning as diffusers' ``QwenImagePipeline`` / ``QwenImageEditPipeline`` build it:

* the prompt goes through a chat template into Qwen2.5-VL; the last hidden layer, without the
  template's first ``drop_idx`` tokens (34 for text-to-image, 64 for the edit template) and
  without padding, is the DiT context ``context [B, L, 3584]`` with ``context_mask [B, L]`` (padding
  to the batch's longest, masked in the DiT's attention; at most ``max_sequence_length`` tokens);
* Qwen-Image-Edit: the reference image, resized to about ``reference_size**2`` pixels (default 1024**2,
  sides multiples of 32), is shown to Qwen2.5-VL in the edit template's image slot AND VAE-encoded
  (posterior mode, normalised by the VAE's per-channel ``latents_mean`` / ``latents_std``), packed
  into 2x2 patches and appended after the target's tokens (``img_shapes`` tells the DiT's RoPE both
  grids); only the target's tokens are read back;
* no guidance embedding: CFG is a separate batch (the pipelines' ``true_cfg_scale``, 4.0);
* sigmas: ``linspace(1, 1/N, N)`` through the scheduler: dynamic shift ``mu`` (0.5 at 256 packed
  tokens -> 0.9 at 8192), then ``1 - s`` stretched so the last sigma is ``shift_terminal`` (0.02), then 0.

The VAE is the Wan-style 3-D ``AutoencoderKLQwenImage``; images are single frames (``T = 1``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mrgrpo.policies.base import Conditioning, EncodedPrompts, images_to_tensor
from mrgrpo.policies.common import resolve_dtype
from mrgrpo.policies.dit_policy import DiTPolicy
from mrgrpo.policies.packed_latents import dynamic_shift_mu, pack_latents, shifted_sigmas, unpack_latents

if TYPE_CHECKING:
    from mrgrpo.sft_data.batch import SFTBatch

T2I_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
#: template tokens dropped from the front of the hidden states (the pipelines' ``prompt_template_encode_start_idx``)
T2I_DROP, EDIT_DROP = 34, 64
#: the pipelines' tokenizer limit before the drop
TOKENIZER_MAX = 1024


def edit_size(width: int, height: int, pixels: int = 1024) -> tuple[int, int]:
    """Reference size of Qwen-Image-Edit: about ``pixels**2`` pixels, aspect kept, sides rounded to multiples of 32."""
    ratio = width / height
    w = math.sqrt(pixels * pixels * ratio)
    return max(32, round(w / 32) * 32), max(32, round(w / ratio / 32) * 32)


class QwenImagePolicy(DiTPolicy):
    """Qwen-Image / Qwen-Image-Edit from a diffusers pipeline folder or hub id.

    Args:
        pretrained: pipeline folder or id (``Qwen/Qwen-Image``, ``Qwen/Qwen-Image-Edit``).
        dtype: dtype of the frozen parts (Qwen2.5-VL, VAE, and the DiT until it trains).
        max_sequence_length: context tokens kept after the template drop (pipeline default 512).
        resolution: image side the dynamic shift is computed for when :meth:`sigmas` gets no size, and of the
            SFT noise law's shift.
        editing: whether the model takes a reference image (default: the folder holds a Qwen-Image-Edit pipeline).
        reference_size: edit references resized to about ``reference_size**2`` pixels (pipeline: 1024).
    """

    family = "qwen_image"
    model_label = "Qwen-Image"

    # declared so that mypy does not type them through nn.Module.__getattr__ (Tensor | Module)
    text_encoder: Any
    processor: Any
    latents_mean: torch.Tensor
    latents_std: torch.Tensor

    def __init__(
        self,
        pretrained: str,
        dtype: str = "bfloat16",
        max_sequence_length: int = 512,
        resolution: int = 512,
        editing: bool | None = None,
        reference_size: int = 1024,
        policy_name: str = "qwen_image",
        policy_kwargs: dict | None = None,
    ):
        super().__init__()
        from diffusers import DiffusionPipeline, QwenImageTransformer2DModel

        self.frozen_dtype = resolve_dtype(dtype)
        pipe = DiffusionPipeline.from_pretrained(pretrained, torch_dtype=self.frozen_dtype)
        kind = type(pipe).__name__
        if not isinstance(getattr(pipe, "transformer", None), QwenImageTransformer2DModel):
            raise ValueError(
                f"{pretrained} is not a Qwen-Image pipeline (its transformer is "
                f"{type(getattr(pipe, 'transformer', None)).__name__})"
            )
        if kind not in ("QwenImagePipeline", "QwenImageEditPipeline"):
            raise ValueError(
                f"{pretrained} holds a {kind}; the qwen_image policy supports QwenImagePipeline and "
                "QwenImageEditPipeline (not QwenImageEditPlusPipeline yet)"
            )
        self.supports_editing = kind == "QwenImageEditPipeline" if editing is None else bool(editing)
        self.transformer, self.vae, self.scheduler = pipe.transformer, pipe.vae, pipe.scheduler
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        object.__setattr__(self, "processor", getattr(pipe, "processor", None))
        if self.supports_editing and self.processor is None:
            raise ValueError(f"{pretrained} has no processor: editing needs Qwen2.5-VL's image processor")
        self.max_sequence_length = int(max_sequence_length)
        self.resolution = int(resolution)
        self.reference_size = int(reference_size)
        self.latent_channels = int(self.vae.config.z_dim)
        self.vae_scale_factor = 2 ** len(self.vae.temperal_downsample)
        z = self.latent_channels
        self.register_buffer(
            "latents_mean", torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1), persistent=False
        )
        self.register_buffer(
            "latents_std", torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1), persistent=False
        )
        self.timestep_shift = (
            float(np.exp(dynamic_shift_mu(self._tokens(self.resolution, self.resolution), self.scheduler.config)))
            if self.scheduler.config.get("use_dynamic_shifting", False)
            else float(self.scheduler.config.get("shift", 1.0))
        )
        self.text_encoder.requires_grad_(False).eval()
        self.vae.requires_grad_(False).eval()
        self.policy_name, self.policy_kwargs = policy_name, dict(policy_kwargs or {})
        self.set_stage("rl")

    def _tokens(self, height: int, width: int) -> int:
        f = 2 * self.vae_scale_factor
        return (height // f) * (width // f)

    # -- latents <-> pixels ------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float32 in [0, 1] from normalised latents ``[B, 16, h, w]`` (one-frame 3-D VAE)."""
        z = latents.to(self.vae.device, torch.float32) * self.latents_std.float() + self.latents_mean.float()
        return (self.vae.decode(z.to(self.vae.dtype)[:, :, None]).sample[:, :, 0].float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, 16, H/8, W/8]`` float32 (posterior mode, ``(z - mean) / std``) of images
        ``[B, 3, H, W]`` in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images takes [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        x = (images.to(self.vae.device, self.vae.dtype) * 2 - 1)[:, :, None]
        z = self.vae.encode(x).latent_dist.mode()[:, :, 0].float()
        return (z - self.latents_mean.float()) / self.latents_std.float()

    # -- conditioning --------------------------------------------------------------------------
    def _embed(self, texts: list[str], drop: int, images: list[Any] | None) -> list[torch.Tensor]:
        """Per text, the last hidden layer ``[n_i, D]`` of its real tokens minus the first ``drop`` (template) ones."""
        device = self.text_encoder.device
        if images is None:
            inputs = self.tokenizer(
                texts, max_length=TOKENIZER_MAX + drop, padding=True, truncation=True, return_tensors="pt"
            )
        else:
            inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.text_encoder.dtype)
        out = self.text_encoder(**inputs, output_hidden_states=True)
        hidden, mask = out.hidden_states[-1], inputs["attention_mask"].bool()
        return [h[m][drop:] for h, m in zip(hidden, mask)]

    def encode(
        self, prompts: list[str], images: list[list[Any]] | None = None, *, negative_prompt: str | None = None
    ) -> EncodedPrompts:
        """Qwen2.5-VL context ``context [B, L, D]`` + ``context_mask [B, L]`` (bool); edit references as
        ``items["ref_latents"]`` (per sample ``[]`` or ``[[16, h, w]]``).

        A prompt without a reference uses the text-to-image template (also in the edit model). With
        ``negative_prompt`` the negatives (with the same references) are encoded in the same batch.
        """
        from PIL import Image

        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} reference lists for {len(prompts)} prompts")
        has_refs = images is not None and any(images)
        if has_refs and not self.supports_editing:
            raise ValueError(
                "this Qwen-Image model is text-to-image only: it takes no reference images (use Qwen-Image-Edit)"
            )
        n = len(prompts)
        refs: list[list[Any]] = [list(r or []) for r in images] if images is not None else [[] for _ in prompts]
        if any(len(r) > 1 for r in refs):
            raise ValueError("Qwen-Image-Edit takes one reference image per prompt")
        resized = []
        for r in refs:
            if r and not hasattr(r[0], "convert"):
                raise TypeError(f"reference images must be PIL images, got {type(r[0]).__name__}")
            resized.append(
                r[0].convert("RGB").resize(edit_size(r[0].width, r[0].height, self.reference_size), Image.LANCZOS)
                if r
                else None
            )
        texts = list(prompts) + ([negative_prompt] * n if negative_prompt is not None else [])
        refs_all = resized + (resized if negative_prompt is not None else [])
        with torch.no_grad():
            rows: list[torch.Tensor | None] = [None] * len(texts)
            plain = [i for i, r in enumerate(refs_all) if r is None]
            edits = [i for i, r in enumerate(refs_all) if r is not None]
            if plain:
                for i, h in zip(plain, self._embed([T2I_TEMPLATE.format(texts[i]) for i in plain], T2I_DROP, None)):
                    rows[i] = h
            if edits:
                embeds = self._embed(
                    [EDIT_TEMPLATE.format(texts[i]) for i in edits], EDIT_DROP, [refs_all[i] for i in edits]
                )
                for i, h in zip(edits, embeds):
                    rows[i] = h
            kept: list[torch.Tensor] = []
            for row in rows:
                if row is None:  # every text is either plain or an edit
                    raise RuntimeError("internal error: a prompt got no text embedding")
                kept.append(row[: self.max_sequence_length])
            longest = max(r.shape[0] for r in kept)
            context = torch.stack([torch.cat([r, r.new_zeros(longest - r.shape[0], r.shape[1])]) for r in kept])
            mask = torch.stack([torch.arange(longest, device=r.device) < r.shape[0] for r in kept])
            items: dict[str, list[Any]] = {}
            if has_refs:
                lat = [
                    [self.encode_images(images_to_tensor([im]).to(self.device))[0]] if im is not None else []
                    for im in resized
                ]
                items["ref_latents"] = lat + (lat if negative_prompt is not None else [])
        both = Conditioning({"context": context, "context_mask": mask}, items)
        if negative_prompt is None:
            return EncodedPrompts(both)
        return EncodedPrompts(both.select(slice(0, n)), both.select(slice(n, 2 * n)))

    # -- denoiser ------------------------------------------------------------------------------
    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        ref_latents: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """DiT velocity ``[B, C, h, w]`` (the DiT's dtype) of ``latents [B, C, h, w]`` at ``sigma [B]``; samples run in
        groups of equal reference shape."""
        return self.velocity_by_reference_shape(latents, sigma, cond, ref_latents, self._dit)

    def _dit(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, refs: list[torch.Tensor] | None
    ) -> torch.Tensor:
        dit = self.active_transformer()
        dtype = next(dit.parameters()).dtype
        device = latents.device
        b, _, h, w = latents.shape
        tokens = pack_latents(latents.to(dtype))
        shapes = [(1, h // 2, w // 2)]
        if refs is not None:
            ref = torch.stack([r.to(device, dtype) for r in refs])
            tokens = torch.cat([tokens, pack_latents(ref)], dim=1)
            shapes.append((1, ref.shape[-2] // 2, ref.shape[-1] // 2))
        mask = cond.tensors["context_mask"].to(device)
        out = dit(
            hidden_states=tokens,
            timestep=sigma.to(device).float().to(dtype),
            encoder_hidden_states=cond.tensors["context"].to(device, dtype),
            encoder_hidden_states_mask=mask,
            img_shapes=[shapes] * b,
            return_dict=False,
        )[0]
        return unpack_latents(out[:, : (h // 2) * (w // 2)], h, w)

    def sigmas(self, num_steps: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """``[num_steps + 1]`` float32 from 1 to 0: dynamic shift of an ``height x width`` image (default ``resolution``
        square) and the scheduler's terminal stretch."""
        return shifted_sigmas(
            self.scheduler, num_steps, self._tokens(height or self.resolution, width or self.resolution)
        )

    # -- training ------------------------------------------------------------------------------
    def flow_matching_loss(self, batch: SFTBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """SFT loss on an :class:`~mrgrpo.sft_data.batch.SFTBatch` (``images [B, 3, H, W]`` in [0, 1], ``B`` prompts,
        ``ref_images`` ``[B][<=1]`` PIL or None);
        noise and ``sigma`` (shift ``timestep_shift``) come from ``generator`` (drawn on its own device)."""
        return self.dit_flow_matching_loss(batch, generator)

    def set_stage(self, stage: str, lora: dict | None = None) -> None:
        """Only the DiT trains (``sft`` and ``rl``; Qwen2.5-VL stays frozen, so ``pretrain`` is refused)."""
        self.set_dit_only_stage(stage, lora, "its text encoder is frozen")

    def train(self, mode: bool = True) -> QwenImagePolicy:
        """Train/eval mode; the text encoder and the VAE always stay in eval mode."""
        super().train(mode)
        self.text_encoder.eval()
        self.vae.eval()
        return self

    def generate(  # the defaults of this model; the sampling is DiTPolicy.generate
        self,
        prompts: list[str],
        images: list[list[Any]] | None = None,
        *,
        num_steps: int = 50,
        cfg_scale: float = 4.0,
        height: int = 512,
        width: int = 512,
        generator: torch.Generator | None = None,
        negative_prompt: str = " ",
    ) -> list[Any]:
        """Euler ODE sampling with plain CFG (``cfg_scale``; the pipelines' ``true_cfg_scale`` 4.0, without their
        norm rescale); B PIL images."""
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
            raise FileNotFoundError(f"qwen_image weights {path} do not exist")
        super().load(path)


def build_qwen_image(pretrained: str = "Qwen/Qwen-Image", **kwargs: Any) -> QwenImagePolicy:
    """Registry factory of ``qwen_image``: Qwen-Image, or Qwen-Image-Edit (``pretrained=Qwen/Qwen-Image-Edit``)."""
    return QwenImagePolicy(
        pretrained, policy_name="qwen_image", policy_kwargs={"pretrained": pretrained, **kwargs}, **kwargs
    )
