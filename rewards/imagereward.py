"""ImageReward-v1.0 (Xu et al., 2023) on transformers' BLIP modules.

The maintained ``image-reward`` package does not import with our stack (its BLIP code imports
``apply_chunking_to_forward`` and ``find_pruneable_heads_and_indices`` from
``transformers.modeling_utils``, gone in transformers 5, and it pins ``timm==0.6.13``), so the
released checkpoint ``THUDM/ImageReward/ImageReward.pt`` is loaded into ``BlipVisionModel`` (ViT-L/16,
224 px) and a ``BlipTextModel`` with cross-attention (BERT-base, ``med_config.json``) through
:func:`convert_state_dict`, the key mapping below. Score, as the reference ``ImageReward.score``:
the prompt (BERT ``bert-base-uncased`` tokens, padded/truncated to 35) attends to the image
tokens; the first token's final hidden state goes through the MLP head (768 -> 1024 -> 128 -> 64
-> 16 -> 1, the aesthetic-predictor shape) and ``r = (mlp - 0.16717362830052426) / 1.0333394966054072``
(the released normalisation: roughly zero mean, unit spread over its training prompts; typical
values -2..2).

Key mapping (released -> ours): ``blip.visual_encoder.cls_token`` -> ``embeddings.class_embedding``;
``pos_embed`` -> ``embeddings.position_embedding``; ``patch_embed.proj`` -> ``embeddings.patch_embedding``;
``blocks.i.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2`` -> ``encoder.layers.i.layer_norm1/
self_attn.qkv/self_attn.projection/layer_norm2/mlp.fc1/mlp.fc2``; ``norm`` -> ``post_layernorm``;
``blip.text_encoder.*`` -> the same names in ``BlipTextModel``; ``mlp.layers.*`` -> the head.
``blip.vision_proj``/``text_proj`` (contrastive projections) are unused.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

import torch

from mrgrpo.rewards import hf_clip
from mrgrpo.rewards.aesthetic import AestheticMLP
from mrgrpo.rewards.base import Reward, RewardOutput

IMAGEREWARD_CHECKPOINT = "THUDM/ImageReward/ImageReward.pt"
IMAGEREWARD_MED_CONFIG = "THUDM/ImageReward/med_config.json"
MEAN, STD = 0.16717362830052426, 1.0333394966054072
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

_VIS_BLOCK = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIS_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}


def convert_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """Released ImageReward keys -> ``(BlipVisionModel, BlipTextModel, MLP head)`` state dicts (unused keys dropped)."""
    vision, text, head = {}, {}, {}
    block = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            rest = key[len("blip.visual_encoder.") :]
            m = block.match(rest)
            if m and m.group(2) in _VIS_BLOCK:
                vision[f"encoder.layers.{m.group(1)}.{_VIS_BLOCK[m.group(2)]}.{m.group(3)}"] = value
            elif rest in _VIS_TOP:
                vision[_VIS_TOP[rest]] = value
            else:
                raise KeyError(f"imagereward: unexpected vision key {key!r}")
        elif key.startswith("blip.text_encoder."):
            rest = key[len("blip.text_encoder.") :]
            if not rest.endswith("position_ids") and not rest.startswith("pooler."):
                text[rest] = value
        elif key.startswith("mlp."):
            head[key[len("mlp.") :]] = value
    return vision, text, head


def vision_config_from(vision: dict[str, torch.Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """BlipVisionConfig kwargs read off the converted weights (heads: ``hidden // 64`` as ViT-B/L unless given)."""
    hidden = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = int(round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    depth = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    return {
        "hidden_size": hidden,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_hidden_layers": depth,
        "intermediate_size": vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_attention_heads": num_heads or max(1, hidden // 64),
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
    }


def text_config_from(med: dict[str, Any], encoder_hidden_size: int) -> dict[str, Any]:
    """BlipTextConfig kwargs from BLIP's ``med_config.json`` (a BERT config with cross-attention)."""
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "layer_norm_eps",
        "hidden_act",
        "pad_token_id",
    )
    missing = [k for k in keys if k not in med]
    if missing:
        raise ValueError(f"imagereward: med_config lacks {missing}")
    return {
        **{k: med[k] for k in keys},
        "encoder_hidden_size": encoder_hidden_size,
        "is_decoder": True,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def _local(path: str, who: str, what: str) -> str:
    if os.path.isfile(path):
        return path
    repo, _, fname = path.rpartition("/")
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo, fname)
    except Exception as exc:
        raise RuntimeError(
            f"{who}: cannot find {what} {path!r} ({exc}). Fix: pass a local file or 'repo_id/filename'."
        ) from exc


class ImageReward(Reward):
    """ImageReward-v1.0 score of each image for its prompt (normalised; higher is better).

    Args:
        checkpoint: ``ImageReward.pt``, a local file or ``repo_id/filename``
            (default ``THUDM/ImageReward/ImageReward.pt``).
        med_config: BLIP's text config JSON (default ``THUDM/ImageReward/med_config.json``).
        tokenizer: BERT tokenizer (hub id or folder; default ``bert-base-uncased``, with ImageReward's added
            ``[DEC]`` / ``[ENC]`` tokens).
        vision_num_heads: attention heads of the ViT (default ``width // 64``: 16 for ViT-L).
        max_length: prompt tokens (35, as ImageReward).
        device, dtype, batch_size: as the other model rewards.
    """

    name = "imagereward"

    def __init__(
        self,
        checkpoint: str = IMAGEREWARD_CHECKPOINT,
        med_config: str = IMAGEREWARD_MED_CONFIG,
        tokenizer: str = "bert-base-uncased",
        vision_num_heads: int | None = None,
        max_length: int = 35,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
    ):
        from transformers import AutoTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        if batch_size < 1:
            raise ValueError(f"imagereward: batch_size must be >= 1, got {batch_size}")
        self.device = hf_clip.resolve_device(device)
        self.dtype = hf_clip.resolve_dtype(dtype, self.device, self.name)
        state = torch.load(_local(checkpoint, self.name, "the checkpoint"), map_location="cpu", weights_only=True)
        vision_sd, text_sd, head_sd = convert_state_dict(state.get("state_dict", state))
        if not vision_sd or not text_sd or not head_sd:
            raise ValueError(
                f"imagereward: {checkpoint} is not an ImageReward checkpoint (expected "
                "blip.visual_encoder.*, "
                "blip.text_encoder.* and mlp.* keys)"
            )
        with open(_local(med_config, self.name, "med_config"), encoding="utf-8") as f:
            med = json.load(f)
        vcfg = BlipVisionConfig(**vision_config_from(vision_sd, vision_num_heads))
        self.vision = BlipVisionModel(vcfg)
        self.text = BlipTextModel(BlipTextConfig(**text_config_from(med, vcfg.hidden_size)), add_pooling_layer=False)
        self.head = AestheticMLP(self.text.config.hidden_size)
        parts = (("vision", self.vision, vision_sd), ("text", self.text, text_sd), ("head", self.head, head_sd))
        for name, module, sd in parts:
            try:
                module.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise RuntimeError(
                    f"imagereward: the {name} weights of {checkpoint} do not fit: {str(exc)[:400]}"
                ) from exc
        for m in (self.vision, self.text):
            m.to(self.device, self.dtype).eval().requires_grad_(False)
        self.head.to(self.device).eval().requires_grad_(False)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"imagereward: cannot load the tokenizer {tokenizer!r} ({exc})") from exc
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        self.image_size, self.max_length, self.batch_size = vcfg.image_size, max_length, batch_size
        self.lock = threading.Lock()

    def preprocess(self, images: list[Any]) -> torch.Tensor:
        """``[N, 3, S, S]``: shorter side resized to S (bicubic), centre crop, CLIP normalisation
        (ImageReward's transform)."""
        from torchvision.transforms import v2

        # resize and crop the PIL image (PIL's bicubic, as ImageReward's torchvision transform on PIL inputs)
        tf = v2.Compose(
            [
                v2.Resize(self.image_size, interpolation=v2.InterpolationMode.BICUBIC),
                v2.CenterCrop(self.image_size),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(CLIP_MEAN, CLIP_STD),
            ]
        )
        return torch.stack([tf(im) for im in hf_clip.rgb(images)])

    @torch.no_grad()
    def raw(self, images: list[Any], prompts: list[str]) -> torch.Tensor:
        """``[N]`` MLP outputs before normalisation."""
        pix = self.preprocess(images).to(self.device, self.dtype)
        img = self.vision(pixel_values=pix).last_hidden_state
        tok = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        img_mask = torch.ones(img.shape[:2], dtype=torch.long, device=self.device)
        out = self.text(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            encoder_hidden_states=img,
            encoder_attention_mask=img_mask,
        ).last_hidden_state
        return self.head(out[:, 0].float()).squeeze(-1)

    def score(self, images, prompts, metadata):
        parts = []
        with self.lock:
            for i in range(0, len(images), self.batch_size):
                raw = self.raw(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
                parts.append(((raw - MEAN) / STD).cpu())
        return RewardOutput(torch.cat(parts) if parts else torch.zeros(0), details={"model": "ImageReward-v1.0"})
