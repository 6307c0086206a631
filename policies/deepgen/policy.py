"""DeepGen 1.0 as a :class:`~mrgrpo.policies.base.DiffusionPolicy`.

Qwen2.5-VL (transformers) reads the prompt (and reference images for editing) followed by
learnable think tokens; Stacked Channel Bridging turns six of its layers' hidden states into the
context and pooled embeddings of an SD3.5-Medium-shaped DiT (diffusers), which denoises the
target latents together with the reference latents in one joint attention sequence. Facts in
``shared/DEEPGEN.md``.

Deviation from the released code (on purpose): padding is masked in the connector, the mean
pool and the DiT context, so outputs do not depend on how much left padding a batch needs. Set
``mask_padding=False`` to reproduce the released behaviour (for parity checks).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mrgrpo.losses import add_flow_noise, flow_matching_loss, sample_flow_sigmas
from mrgrpo.policies.base import Conditioning, EncodedPrompts, STAGES, images_to_tensor
from mrgrpo.policies.deepgen.checkpoint import load_deepgen_checkpoint
from mrgrpo.policies.deepgen.dit import dit_forward, install_masked_attention
from mrgrpo.policies.deepgen.scb import Connector, masked_mean
from mrgrpo.policies.dit_policy import DiTPolicy

T2I_TEMPLATE = "<|im_start|>user\nGenerate an image: {prompt}<|im_end|>\n<|im_start|>assistant\n"
EDIT_TEMPLATE = "<|im_start|>user\n{images}\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
IMAGE_SLOT = "<|vision_start|>{pads}<|vision_end|>"
#: released SCB selection: decoder outputs of 0-based layers 34, 28, 22, 16, 10, 4
RELEASED_SCB_LAYERS = (35, 29, 23, 17, 11, 5)
VLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def fit_to_budget(width: int, height: int, budget: int = 512, multiple: int = 32) -> tuple[int, int]:
    """Size with about ``budget^2`` pixels, aspect kept, sides rounded up to ``multiple``."""
    scale = math.sqrt(budget * budget / (width * height))
    return (max(multiple, math.ceil(width * scale / multiple) * multiple),
            max(multiple, math.ceil(height * scale / multiple) * multiple))


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


class DeepGenPolicy(DiTPolicy):
    """DeepGen: Qwen2.5-VL + SCB + think tokens + SD3.5-M DiT (text-to-image and editing).

    Args:
        vlm: Qwen2.5-VL path or hub id (model, tokenizer and image processor).
        transformer: DiT source: a diffusers pipeline folder/id (``transformer_subfolder``) or a model folder.
        vae: VAE source (default: ``transformer``'s pipeline, subfolder ``vae``).
        checkpoint: DeepGen weights to load (released layout or ``policy.save`` folder).
        dtype: dtype of the frozen modules (VLM, VAE; the DiT until it trains).
        scb_layers: ``hidden_states`` indices, deepest first.
        num_queries: think tokens.
        connector_layers / connector_heads / connector_mlp: connector shape.
        mask_padding: mask pads in connector, pooling and DiT context (False = released behaviour).
        timestep_shift: the scheduler's shift (training noise law too).
        pixel_budget: reference images are resized to about this squared, sides multiples of 32.
        max_prompt_tokens: training keeps the last ``max_prompt_tokens`` prompt positions (+ queries).
        policy_name / policy_kwargs: how to rebuild this policy (written by :meth:`save`).
    """

    supports_editing = True

    def __init__(self, vlm: str, transformer: str, *, transformer_subfolder: str | None = "transformer", vae: str | None = None,
                 vae_subfolder: str | None = "vae", scheduler: str | None = None, checkpoint: str | None = None,
                 dtype: str = "bfloat16", scb_layers: Sequence[int] = RELEASED_SCB_LAYERS, num_queries: int = 128,
                 connector_layers: int = 6, connector_heads: int = 32, connector_mlp: int = 11946, mask_padding: bool = True,
                 timestep_shift: float = 3.0, pixel_budget: int = 512, max_prompt_tokens: int | None = 1024,
                 init_seed: int = 0, policy_name: str = "deepgen", policy_kwargs: dict | None = None,
                 modules: dict[str, Any] | None = None):
        super().__init__()
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

        self.frozen_dtype = _dtype(dtype)
        self.policy_name = policy_name
        self.policy_kwargs = dict(policy_kwargs or {})
        if modules is not None:  # already-built components (benchmarks of the real-size shapes without weights)
            self.lmm, self.tokenizer, self.image_processor = modules["lmm"], modules["tokenizer"], modules["image_processor"]
            self.transformer, self.vae = modules["transformer"], modules["vae"]
            self.scheduler = modules.get("scheduler") or FlowMatchEulerDiscreteScheduler(shift=timestep_shift)
        else:
            self.lmm = Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm, torch_dtype=self.frozen_dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(vlm)
            self.image_processor = Qwen2VLImageProcessor.from_pretrained(vlm)
            self.transformer = SD3Transformer2DModel.from_pretrained(transformer, subfolder=transformer_subfolder, torch_dtype=self.frozen_dtype)
            vae_src = vae or transformer
            self.vae = AutoencoderKL.from_pretrained(vae_src, subfolder=vae_subfolder if vae is None or vae_subfolder else None,
                                                     torch_dtype=self.frozen_dtype)
            try:
                self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(scheduler or transformer, subfolder="scheduler")
            except (OSError, ValueError):
                self.scheduler = FlowMatchEulerDiscreteScheduler(shift=timestep_shift)
        install_masked_attention(self.transformer)

        text_cfg = self.lmm.config.text_config if hasattr(self.lmm.config, "text_config") else self.lmm.config
        hidden = text_cfg.hidden_size
        n_states = text_cfg.num_hidden_layers + 1
        bad = [i for i in scb_layers if not -n_states <= i < n_states]
        if bad:
            raise ValueError(f"scb_layers {bad} are outside hidden_states[0..{n_states - 1}] of this VLM ({n_states - 1} layers)")
        self.scb_layers = [int(i) for i in scb_layers]
        gen = torch.Generator().manual_seed(init_seed)
        self.meta_queries = nn.Parameter(torch.randn(num_queries, hidden, generator=gen) / math.sqrt(hidden))
        self.projector_1 = nn.Linear(hidden * len(self.scb_layers), hidden)
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            self.connector = Connector(hidden, connector_heads, connector_mlp, connector_layers)
        self.projector_2 = nn.Linear(hidden, self.transformer.config.pooled_projection_dim)
        self.projector_3 = nn.Linear(hidden, self.transformer.config.joint_attention_dim)
        for p in (self.projector_2, self.projector_3):
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)
        self.mask_padding = mask_padding
        self.timestep_shift = timestep_shift
        self.pixel_budget = pixel_budget
        self.max_prompt_tokens = max_prompt_tokens
        self.latent_channels = self.transformer.config.in_channels
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_token = "<|image_pad|>"
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.pad_token_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.merge = self.lmm.config.vision_config.spatial_merge_size
        if checkpoint:
            self.load(checkpoint)
        self.set_stage("rl")

    # -- prompt building ----------------------------------------------------------------------
    def _ref_inputs(self, images: Sequence[Any]) -> tuple[list[torch.Tensor], list[int], torch.Tensor | None, torch.Tensor | None]:
        """Resize references to the budget; VAE pixels ``[3, H, W]``, token counts, ViT patches and grids."""
        from PIL import Image

        pixels, counts, vit_inputs = [], [], []
        for im in images:
            im = im.convert("RGB")
            w, h = fit_to_budget(im.width, im.height, self.pixel_budget, 32)
            resized = im.resize((w, h), Image.BICUBIC)
            pixels.append(images_to_tensor([resized])[0])
            counts.append((h // 32) * (w // 32))
            vit_inputs.append(resized.resize((w * 28 // 32, h * 28 // 32), Image.BILINEAR))
        if not vit_inputs:
            return pixels, counts, None, None
        proc = self.image_processor(images=vit_inputs, do_resize=False, return_tensors="pt")
        return pixels, counts, proc["pixel_values"], proc["image_grid_thw"]

    def _tokenize(self, texts: list[str], truncate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids ``[B, L]`` and mask, with ``num_queries`` placeholders appended to each."""
        q = self.meta_queries.shape[0]
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if truncate and self.max_prompt_tokens:
            rows = [r[-self.max_prompt_tokens:] for r in rows]
        rows = [r + [self.pad_token_id] * q for r in rows]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, longest - len(r):] = torch.tensor(r)
            mask[i, longest - len(r):] = 1
        return ids, mask

    def _encode_batch(self, prompts: list[str], refs: list[list[Any]] | None, truncate: bool = False) -> Conditioning:
        """The VLM + SCB forward for B prompts: context ``[B, L, J]``, pooled ``[B, P]``, mask ``[B, L]``."""
        device = self.device
        texts, ref_pixels, vit_pixels, grids = [], [], [], []
        for i, prompt in enumerate(prompts):
            imgs = refs[i] if refs else []
            pixels, counts, vit, grid = self._ref_inputs(imgs)
            ref_pixels.append(pixels)
            if vit is not None:
                vit_pixels.append(vit)
                grids.append(grid)
            if imgs:
                slots = "".join(IMAGE_SLOT.format(pads=self.image_token * n) for n in counts)
                texts.append(EDIT_TEMPLATE.format(images=slots, prompt=prompt))
            else:
                texts.append(T2I_TEMPLATE.format(prompt=prompt))
        ids, mask = self._tokenize(texts, truncate)
        ids, mask = ids.to(device), mask.to(device)
        q = self.meta_queries.shape[0]
        embed = self.lmm.get_input_embeddings()
        embeds = embed(ids)
        embeds = torch.cat([embeds[:, :-q], self.meta_queries.to(embeds.dtype).unsqueeze(0).expand(len(prompts), -1, -1)], dim=1)
        image_grid = None
        if vit_pixels:
            image_grid = torch.cat(grids).to(device)
            with torch.no_grad():
                feats = self.lmm.model.get_image_features(torch.cat(vit_pixels).to(device, self.lmm.dtype), image_grid).pooler_output
            feats = torch.cat(list(feats)).to(embeds.dtype)
            slot = (ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(slot, feats)
        token_type = (ids == self.image_token_id).int()
        position_ids, _ = self.lmm.model.get_rope_index(ids, token_type, image_grid_thw=image_grid, attention_mask=mask)
        out = self.lmm.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                            output_hidden_states=True, use_cache=False)
        states = out.hidden_states
        stacked = torch.cat([states[i] for i in self.scb_layers], dim=-1)
        valid = mask.bool() if self.mask_padding else None
        z = self.connector(self.projector_1(stacked.to(self.projector_1.weight.dtype)), valid)
        context = self.projector_3(z)
        pooled = self.projector_2(masked_mean(z, valid))
        tensors = {"context": context, "pooled": pooled}
        if self.mask_padding:
            tensors["context_mask"] = mask.bool()
        items = {}
        if refs and any(refs):
            with torch.no_grad():
                items["ref_latents"] = [[self.encode_images(p.unsqueeze(0).to(device))[0] for p in px] for px in ref_pixels]
        return Conditioning(tensors, items)

    def _grad_context(self):
        needs = any(p.requires_grad for n, p in self.named_parameters() if not n.startswith(("transformer.", "vae.")))
        return contextlib.nullcontext() if needs else torch.no_grad()

    def encode(self, prompts: list[str], images: list[list[Any]] | None = None, *, negative_prompt: str | None = None,
               truncate: bool = False) -> EncodedPrompts:
        """Encode B prompts once; with ``negative_prompt`` the negative ones go through the VLM in the same batch."""
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} reference lists for {len(prompts)} prompts")
        with self._grad_context():
            if negative_prompt is None:
                return EncodedPrompts(self._encode_batch(prompts, images, truncate))
            negs = [negative_prompt] * len(prompts)
            both = self._encode_batch(prompts + negs, (images + images) if images else None, truncate)
            n = len(prompts)
            return EncodedPrompts(both.select(slice(0, n)), both.select(slice(n, 2 * n)))

    # -- denoiser --------------------------------------------------------------------------------
    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 ref_latents: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        dit = self.active_transformer()
        dtype = next(dit.parameters()).dtype
        refs = ref_latents if ref_latents is not None else cond.items.get("ref_latents")
        if refs is not None:
            refs = [[r.to(dtype) for r in rs] for rs in refs]
        timestep = (sigma.to(latents.device).float() * 1000.0).to(dtype)
        return dit_forward(dit, latents.to(dtype), timestep, cond.tensors["context"].to(dtype), cond.tensors["pooled"].to(dtype),
                           cond.tensors.get("context_mask"), refs)

    # -- training ------------------------------------------------------------------------------------
    def flow_matching_loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        images = batch["images"].to(self.device)
        with torch.no_grad():
            x0 = self.encode_images(images)
        cond = self.encode(list(batch["prompts"]), batch.get("ref_images"), truncate=True).cond
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
        sigma = sample_flow_sigmas(x0.shape[0], shift=self.timestep_shift, generator=generator).to(x0.device)
        v = self.velocity(add_flow_noise(x0, noise, sigma), sigma, cond)
        return flow_matching_loss(v, x0, noise)

    def scb_modules(self) -> dict[str, nn.Module | nn.Parameter]:
        return {"projector_1": self.projector_1, "connector": self.connector, "projector_2": self.projector_2,
                "projector_3": self.projector_3}

    def set_stage(self, stage: str, lora: dict | None = None) -> None:
        """pretrain: think tokens + projectors + connector; sft: + DiT + VLM LoRA; rl: DiT (or a DiT LoRA)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.requires_grad_(False)
        if stage in ("pretrain", "sft"):
            self.meta_queries.requires_grad_(True)
            for m in self.scb_modules().values():
                m.float().requires_grad_(True)
            self.meta_queries.data = self.meta_queries.data.float()
        if stage == "sft":
            self._add_vlm_lora(lora or {})
            self.transformer.float().requires_grad_(True)
        if stage == "rl":
            self.train_dit(lora)
        self.stage = stage

    def _add_vlm_lora(self, cfg: dict) -> None:
        from peft import LoraConfig

        lm = self.lmm
        if getattr(lm, "peft_config", None):
            for n, p in lm.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
            return
        # language-model linear layers and embed_tokens; never the ViT
        targets = r".*language_model.*\.(" + "|".join(VLM_LORA_TARGETS + ("embed_tokens",)) + ")"
        config = LoraConfig(r=cfg.get("rank", 64), lora_alpha=cfg.get("alpha", 128), lora_dropout=cfg.get("dropout", 0.05),
                            target_modules=targets)
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, lm, adapter_name="default")  # keys: ...q_proj.lora_A.default.weight (released layout)
        lm.peft_config = {"default": config}
        self.train(self.training)  # new LoRA modules (dropout) follow the policy's train/eval mode
        for n, p in lm.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)

    def load(self, path: str) -> None:
        """Load a ``save()`` folder or a released DeepGen checkpoint (SFT, or RL on top of SFT)."""
        p = Path(path)
        meta = p / "policy.json"
        if meta.exists():
            info = json.loads(meta.read_text())
            if info.get("dit_lora") and self.dit_lora is None:
                self.train_dit(info["dit_lora"])
            if info.get("stage") == "sft" and not getattr(self.lmm, "peft_config", None):
                self._add_vlm_lora({})
        elif not p.exists():
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(str(path)))  # a hub id (only where a hub is reachable)
        state_has_lora = self._checkpoint_has_vlm_lora(p)
        if state_has_lora and not getattr(self.lmm, "peft_config", None):
            self._add_vlm_lora({})
        load_deepgen_checkpoint(self, p)

    @staticmethod
    def _checkpoint_has_vlm_lora(path: Path) -> bool:
        from mrgrpo.policies.deepgen.checkpoint import normalise_keys, read_state_dict

        try:
            return any(k.startswith("lmm.") and "lora_" in k for k in normalise_keys(read_state_dict(path)))
        except Exception:
            return False


def build_deepgen(**kwargs: Any) -> DeepGenPolicy:
    """Registry factory of ``deepgen``: the real model from local paths or hub ids."""
    defaults = {"vlm": "Qwen/Qwen2.5-VL-3B-Instruct", "transformer": "Skywork/UniPic2-SD3.5M-Kontext-2B"}
    merged = {**defaults, **kwargs}
    return DeepGenPolicy(**merged, policy_name="deepgen", policy_kwargs=merged)
