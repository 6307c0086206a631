"""DeepGen 1.0 as a :class:`~mrgrpo.policies.base.DiffusionPolicy`.

Qwen2.5-VL (transformers) reads the prompt (and reference images for editing) followed by
learnable think tokens; Stacked Channel Bridging turns six of its layers' hidden states into the
context and pooled embeddings of an SD3.5-Medium-shaped DiT (diffusers), which denoises the
target latents together with the reference latents in one joint attention sequence (architecture,
prompts and released layouts: docs/policies.md, section DeepGen).

Deviation from the released code (on purpose): padding is masked in the connector, the mean
pool and the DiT context, so outputs do not depend on how much left padding a batch needs. Set
``mask_padding=False`` to reproduce the released behaviour (for parity checks).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mrgrpo.devices import randn
from mrgrpo.imaging import resize_to_budget
from mrgrpo.losses import add_flow_noise, flow_matching_loss, sample_flow_sigmas
from mrgrpo.policies.base import STAGES, Conditioning, EncodedPrompts, images_to_tensor
from mrgrpo.policies.common import resolve_dtype
from mrgrpo.policies.deepgen.dit import dit_forward, install_masked_attention
from mrgrpo.policies.deepgen.prompting import (  # noqa: F401  (re-exported: the templates are public names)
    EDIT_TEMPLATE,
    IMAGE_SLOT,
    T2I_TEMPLATE,
    VIT_MEAN,
    VIT_STD,
    left_padded_rows,
    prompt_text,
    vit_patches,
)
from mrgrpo.policies.deepgen.scb import Connector, masked_mean
from mrgrpo.policies.deepgen.weights import VLM_LORA_DEFAULT, VLM_LORA_TARGETS, DeepGenWeights  # noqa: F401

if TYPE_CHECKING:
    from mrgrpo.sft_data.batch import SFTBatch

#: released SCB selection: decoder outputs of 0-based layers 34, 28, 22, 16, 10, 4
RELEASED_SCB_LAYERS = (35, 29, 23, 17, 11, 5)


class DeepGenPolicy(DeepGenWeights):
    """DeepGen: Qwen2.5-VL + SCB + think tokens + SD3.5-M DiT (text-to-image and editing).

    Args:
        vlm: Qwen2.5-VL folder or hub id (model + tokenizer).
        transformer: DiT source: a diffusers pipeline folder/id (``transformer_subfolder``) or a model folder
            (``transformer_subfolder=None``).
        vae / vae_subfolder: VAE source (default: ``transformer``'s pipeline, subfolder ``vae``).
        scheduler: scheduler source (default: ``transformer``'s pipeline, subfolder ``scheduler``; else
            ``FlowMatchEulerDiscreteScheduler(shift=timestep_shift)``).
        checkpoint: DeepGen weights loaded after building (released file/folder or a ``save()`` folder).
        dtype: dtype of the frozen modules (VLM, VAE; the DiT until it trains). Trained parts are float32.
        scb_layers: ``hidden_states`` indices, deepest first (released: 35, 29, 23, 17, 11, 5).
        num_queries: think tokens (128).
        connector_layers / connector_heads / connector_mlp: connector shape (6 / 32 / 11946).
        mask_padding: mask pads in the connector, the pooling and the DiT context (False = the
            released behaviour, where pads leak and outputs depend on the batch's padding).
        timestep_shift: the scheduler's shift, also the training noise law's.
        pixel_budget: reference images are resized to about ``pixel_budget**2`` pixels, sides multiples of 32.
        max_prompt_tokens: ``encode(..., truncate=True)`` (training) keeps the last ``max_prompt_tokens``
            positions of a text-to-image prompt (+ the think tokens); editing prompts are not truncated.
        init_seed: seed of the think tokens' and the connector's initialisation.
        vlm_lora: overrides of :data:`VLM_LORA_DEFAULT` (``rank, alpha, dropout, target_modules``) for the sft stage.
        policy_name / policy_kwargs: how to rebuild this policy (written to ``policy.json`` by :meth:`save`).
        modules: already-built ``{"lmm", "tokenizer", "transformer", "vae"[, "scheduler"]}`` (real-size
            benchmarks without weights); the path arguments are then ignored.
    """

    supports_editing = True

    def __init__(
        self,
        vlm: str,
        transformer: str,
        *,
        transformer_subfolder: str | None = "transformer",
        vae: str | None = None,
        vae_subfolder: str | None = "vae",
        scheduler: str | None = None,
        checkpoint: str | None = None,
        dtype: str = "bfloat16",
        scb_layers: Sequence[int] = RELEASED_SCB_LAYERS,
        num_queries: int = 128,
        connector_layers: int = 6,
        connector_heads: int = 32,
        connector_mlp: int = 11946,
        mask_padding: bool = True,
        timestep_shift: float = 3.0,
        pixel_budget: int = 512,
        max_prompt_tokens: int | None = 1024,
        init_seed: int = 0,
        vlm_lora: dict[str, Any] | None = None,
        policy_name: str = "deepgen",
        policy_kwargs: dict | None = None,
        modules: dict[str, Any] | None = None,
    ):
        super().__init__()
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
        )
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        self.frozen_dtype = resolve_dtype(dtype)
        self.policy_name = policy_name
        self.policy_kwargs = dict(policy_kwargs or {})
        if modules is not None:
            self.lmm, self.tokenizer = modules["lmm"], modules["tokenizer"]
            self.transformer, self.vae = modules["transformer"], modules["vae"]
            self.scheduler = modules.get("scheduler") or FlowMatchEulerDiscreteScheduler(shift=timestep_shift)
        else:
            self.lmm = Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm, dtype=self.frozen_dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(vlm)
            self.transformer = SD3Transformer2DModel.from_pretrained(
                transformer, subfolder=transformer_subfolder, torch_dtype=self.frozen_dtype
            )
            self.vae = AutoencoderKL.from_pretrained(
                vae or transformer, subfolder=vae_subfolder, torch_dtype=self.frozen_dtype
            )
            try:
                self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
                    scheduler or transformer, subfolder="scheduler"
                )
            except (OSError, ValueError):
                self.scheduler = FlowMatchEulerDiscreteScheduler(shift=timestep_shift)
        self.lmm.requires_grad_(False)
        self.vae.requires_grad_(False).eval()
        install_masked_attention(self.transformer)

        text_cfg = self.lmm.config.text_config if hasattr(self.lmm.config, "text_config") else self.lmm.config
        hidden = text_cfg.hidden_size
        n_states = text_cfg.num_hidden_layers + 1
        bad = [i for i in scb_layers if not -n_states <= int(i) < n_states]
        if bad or not scb_layers:
            raise ValueError(
                f"scb_layers {list(scb_layers)}: {bad or 'empty'} outside hidden_states[0..{n_states - 1}] "
                f"of this VLM ({n_states - 1} layers; hidden_states[0] is the embedding output)"
            )
        self.scb_layers = [int(i) for i in scb_layers]
        gen = torch.Generator().manual_seed(init_seed)
        self.meta_queries = nn.Parameter(torch.randn(num_queries, hidden, generator=gen) / math.sqrt(hidden))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.projector_1 = nn.Linear(hidden * len(self.scb_layers), hidden)
            self.connector = Connector(hidden, connector_heads, connector_mlp, connector_layers)
        self.projector_2 = nn.Linear(hidden, self.transformer.config.pooled_projection_dim)
        self.projector_3 = nn.Linear(hidden, self.transformer.config.joint_attention_dim)
        for proj in (self.projector_2, self.projector_3):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
        self.vlm_lora: dict | None = None  # the injected VLM LoRA's settings (None: no LoRA in the VLM)
        self.vlm_lora_options = dict(vlm_lora or {})  # overrides of VLM_LORA_DEFAULT for the sft stage
        self.mask_padding = bool(mask_padding)
        self.timestep_shift = float(timestep_shift)
        self.pixel_budget = pixel_budget
        self.max_prompt_tokens = max_prompt_tokens
        self.latent_channels = self.transformer.config.in_channels
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_token = "<|image_pad|>"
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.pad_token_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        vcfg = self.lmm.config.vision_config
        self.vit_patch, self.merge, self.temporal_patch = (
            vcfg.patch_size,
            vcfg.spatial_merge_size,
            vcfg.temporal_patch_size,
        )
        if checkpoint:
            self.load(checkpoint)
        self.set_stage("rl")

    # -- prompt building ----------------------------------------------------------------------
    def vit_patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ViT patches ``[N, 3 * tp * 14 * 14]`` and ``grid_thw [1, 3]`` of one reference ``[3, H, W]`` in [0, 1]
        (:func:`~mrgrpo.policies.deepgen.prompting.vit_patches` with this VLM's vision settings)."""
        return vit_patches(pixels, self.vit_patch, self.merge, self.temporal_patch)

    def _ref_inputs(
        self, images: Sequence[Any]
    ) -> tuple[list[torch.Tensor], list[int], list[torch.Tensor], list[torch.Tensor]]:
        """Per reference: VAE pixels ``[3, H, W]`` at the pixel budget, token count, ViT patches, grid."""
        pixels, counts, patches, grids = [], [], [], []
        for im in images:
            if not hasattr(im, "convert"):
                raise TypeError(f"reference images must be PIL images, got {type(im).__name__}")
            im = resize_to_budget(im, self.pixel_budget, 32)  # the SFT data's rule; no-op on images it sized
            px = images_to_tensor([im])[0]
            pixels.append(px)
            counts.append((im.height // 32) * (im.width // 32))
            pt, grid = self.vit_patches(px)
            patches.append(pt)
            grids.append(grid)
        return pixels, counts, patches, grids

    def _tokenize(self, texts: list[str], truncate: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids ``[B, L]`` and mask ``[B, L]``, with ``num_queries`` placeholders appended to each row."""
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return left_padded_rows(rows, truncate, self.max_prompt_tokens, self.pad_token_id, self.meta_queries.shape[0])

    def prompt_text(self, prompt: str, num_refs: int = 0, ref_tokens: Sequence[int] = ()) -> str:
        """The VLM prompt (before the think tokens): the T2I template, or the editing one with image slots."""
        return prompt_text(prompt, self.image_token, num_refs, ref_tokens)

    def _encode_batch(self, prompts: list[str], refs: list[list[Any]] | None, truncate: bool = False) -> Conditioning:
        """The VLM + SCB forward for B prompts.

        Returns tensors ``context [B, L, joint_attention_dim]``, ``pooled [B, pooled_projection_dim]``,
        ``context_mask [B, L]`` (bool, only with ``mask_padding``), and items ``ref_latents`` (per sample a
        list of ``[C, h, w]``) when any prompt has references.
        """
        device = self.device
        texts, ref_pixels, vit_patches, grids, cut = [], [], [], [], []
        for i, prompt in enumerate(prompts):
            imgs = list(refs[i]) if refs and refs[i] else []
            pixels, counts, patches, grid = self._ref_inputs(imgs)
            ref_pixels.append(pixels)
            vit_patches += patches
            grids += grid
            texts.append(self.prompt_text(prompt, len(imgs), counts))
            cut.append(truncate and not imgs)
        ids, mask = self._tokenize(texts, cut)
        ids, mask = ids.to(device), mask.to(device)
        q = self.meta_queries.shape[0]
        embeds = self.lmm.get_input_embeddings()(ids)
        queries = self.meta_queries.to(embeds.dtype).unsqueeze(0).expand(len(prompts), -1, -1)
        embeds = torch.cat([embeds[:, :-q], queries], dim=1)
        image_grid = None
        if vit_patches:
            image_grid = torch.cat(grids).to(device)
            with torch.no_grad():
                feats = self.lmm.model.get_image_features(
                    torch.cat(vit_patches).to(device, self.lmm.dtype), image_grid
                ).pooler_output
            feats = torch.cat(list(feats)).to(embeds.dtype)
            slot = ids == self.image_token_id
            if int(slot.sum()) != feats.shape[0]:
                raise RuntimeError(
                    f"{int(slot.sum())} image tokens in the prompts but the ViT gave {feats.shape[0]} features"
                )
            embeds = embeds.masked_scatter(slot.unsqueeze(-1).expand_as(embeds), feats)
        token_type = (ids == self.image_token_id).int()
        position_ids, _ = self.lmm.model.get_rope_index(ids, token_type, image_grid_thw=image_grid, attention_mask=mask)
        out = self.lmm.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        stacked = torch.cat([out.hidden_states[i] for i in self.scb_layers], dim=-1)
        valid = mask.bool() if self.mask_padding else None
        z = self.connector(self.projector_1(stacked.to(self.projector_1.weight.dtype)), valid)
        tensors = {"context": self.projector_3(z), "pooled": self.projector_2(masked_mean(z, valid))}
        if self.mask_padding:
            tensors["context_mask"] = mask.bool()
        items = {}
        if refs and any(refs):
            with torch.no_grad():
                items["ref_latents"] = [[self.encode_images(px.unsqueeze(0))[0] for px in pxs] for pxs in ref_pixels]
        return Conditioning(tensors, items)

    def _grad_context(self):
        needs = any(p.requires_grad for n, p in self.named_parameters() if not n.startswith(("transformer.", "vae.")))
        return contextlib.nullcontext() if needs and torch.is_grad_enabled() else torch.no_grad()

    def encode(
        self,
        prompts: list[str],
        images: list[list[Any]] | None = None,
        *,
        negative_prompt: str | None = None,
        truncate: bool = False,
    ) -> EncodedPrompts:
        """Encode B prompts once (VLM + SCB; gradients only when the SCB / VLM LoRA train).

        Args:
            prompts: B instructions (text-to-image prompts, or edit instructions when ``images`` is given).
            images: per prompt, a list of PIL reference images (may be empty for a T2I prompt in the same batch).
            negative_prompt: with it, also the CFG conditioning, computed in the SAME VLM batch: for T2I the
                negative text (``""`` = the empty prompt) through the same template; for editing the same
                references + the negative text.
            truncate: training-time left truncation of T2I prompts to ``max_prompt_tokens``.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings")
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} reference lists for {len(prompts)} prompts")
        with self._grad_context():
            if negative_prompt is None:
                return EncodedPrompts(self._encode_batch(list(prompts), images, truncate))
            n = len(prompts)
            both = self._encode_batch(
                list(prompts) + [negative_prompt] * n, (list(images) * 2) if images else None, truncate
            )
            return EncodedPrompts(both.select(slice(0, n)), both.select(slice(n, 2 * n)))

    # -- denoiser --------------------------------------------------------------------------------
    def velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        ref_latents: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """DiT velocity ``[B, C, h, w]`` (the DiT's dtype) of ``latents [B, C, h, w]`` at ``sigma [B]``
        (timestep = sigma * 1000).

        Reference latents (``cond.items["ref_latents"]`` or ``ref_latents``) join the target's tokens in the
        joint attention; the context mask hides pads when ``mask_padding``.
        """
        if latents.ndim != 4 or sigma.shape != (latents.shape[0],):
            raise ValueError(
                f"velocity takes latents [B, C, h, w] and sigma [B], got {tuple(latents.shape)} and "
                f"{tuple(sigma.shape)}"
            )
        if len(cond) != latents.shape[0]:
            raise ValueError(
                f"conditioning holds {len(cond)} samples for {latents.shape[0]} latents (use cond.repeat(G))"
            )
        dit = self.active_transformer()
        dtype = next(dit.parameters()).dtype
        refs = ref_latents if ref_latents is not None else cond.items.get("ref_latents")
        if refs is not None:
            refs = [[r.to(latents.device, dtype) for r in rs] for rs in refs]
        timestep = (sigma.to(latents.device).float() * 1000.0).to(dtype)
        ctx = cond.tensors["context"].to(latents.device, dtype)
        return dit_forward(
            dit,
            latents.to(dtype),
            timestep,
            ctx,
            cond.tensors["pooled"].to(latents.device, dtype),
            cond.tensors.get("context_mask"),
            refs,
        )

    # -- training ------------------------------------------------------------------------------------
    def flow_matching_loss(self, batch: SFTBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """SFT loss on an :class:`~mrgrpo.sft_data.batch.SFTBatch` (``images [B, 3, H, W]`` in [0, 1], ``B`` prompts,
        ``ref_images`` ``[B][k]`` PIL or None; the batch checks that the counts agree).

        Targets encoded by the VAE (mode); noise and ``sigma ~ shift-3 law`` drawn from ``generator``
        (on its own device).
        """
        with torch.no_grad():
            x0 = self.encode_images(batch.images.to(self.device))
        cond = self.encode(list(batch.prompts), batch.ref_images, truncate=True).cond
        noise = randn(x0.shape, generator, device=x0.device)
        sigma = sample_flow_sigmas(x0.shape[0], shift=self.timestep_shift, generator=generator, device=x0.device)
        v = self.velocity(add_flow_noise(x0, noise, sigma), sigma, cond)
        return flow_matching_loss(v, x0, noise)

    def scb_modules(self) -> dict[str, nn.Module]:
        return {
            "projector_1": self.projector_1,
            "connector": self.connector,
            "projector_2": self.projector_2,
            "projector_3": self.projector_3,
        }

    def set_stage(self, stage: str, lora: dict | None = None) -> None:
        """Freeze all but the stage's parts; trained parts become float32.

        * ``pretrain``: think tokens + projectors + connector.
        * ``sft``: + the whole DiT + a VLM LoRA (:data:`VLM_LORA_DEFAULT`: r 64, alpha 128, dropout 0.05,
          language-model linear layers + embed_tokens; the ``vlm_lora`` policy kwarg overrides it). ``lora``
          must be None here (a DiT LoRA is an ``rl`` option).
        * ``rl``: the DiT only, or a DiT LoRA when ``lora`` (``{rank, alpha, dropout, target_modules}``) is given.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.requires_grad_(False)
        if stage in ("pretrain", "sft"):
            self.meta_queries.data = self.meta_queries.data.float()
            self.meta_queries.requires_grad_(True)
            for m in self.scb_modules().values():
                m.float().requires_grad_(True)
        if stage == "sft":
            if lora and lora.get("enabled", True):
                raise ValueError(
                    "the sft stage trains the whole DiT + the VLM LoRA; a DiT LoRA (train.lora) is for stage rl. "
                    "Set the VLM LoRA with the policy kwarg vlm_lora={rank, alpha, dropout, target_modules}"
                )
            if not self.has_vlm_lora():
                self.add_vlm_lora({**VLM_LORA_DEFAULT, **(self.vlm_lora_options or {})})
            for n, p in self.lmm.named_parameters():
                if "lora_" in n:
                    p.data = p.data.float()
                    p.requires_grad_(True)
            self.train_dit(None)
        if stage == "rl":
            self.train_dit(lora)
        self.stage = stage
        self.train(self.training)

    def train(self, mode: bool = True) -> DeepGenPolicy:
        """Train/eval mode; the VAE, and the VLM while none of it trains, always stay in eval mode
        (no LoRA dropout in a frozen VLM: RL conditioning is deterministic)."""
        super().train(mode)
        self.vae.eval()
        if mode and not any(p.requires_grad for p in self.lmm.parameters()):
            self.lmm.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Activation checkpointing in the DiT, and in the VLM's language model when its LoRA trains."""
        super().enable_gradient_checkpointing()
        if any(p.requires_grad for p in self.lmm.parameters()):
            if hasattr(self.lmm, "activation_checkpointing_enable"):  # transformers >= 5.x
                self.lmm.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.lmm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_deepgen(**kwargs: Any) -> DeepGenPolicy:
    """Registry factory of ``deepgen``: the real model from local paths or hub ids."""
    defaults = {"vlm": "Qwen/Qwen2.5-VL-3B-Instruct", "transformer": "Skywork/UniPic2-SD3.5M-Kontext-2B"}
    merged = {**defaults, **kwargs}
    return DeepGenPolicy(**merged, policy_name="deepgen", policy_kwargs=merged)
