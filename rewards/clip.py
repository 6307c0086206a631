"""CLIP score: cosine similarity of the image and prompt embeddings (open_clip).

The paper uses CLIP ViT-L/14 (``model_name="ViT-L-14", pretrained="openai"``). ``pretrained``
is an open_clip tag or a local checkpoint file; ``model_config`` registers a custom architecture
(tests use a tiny random-init one saved to disk and loaded through the same path).
Text is truncated to the model's context (77 tokens).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from mrgrpo.rewards.base import Reward, RewardOutput


def register_model_config(model_name: str, config: dict | str) -> None:
    """Register an open_clip architecture under ``model_name`` from a config dict or a JSON file."""
    import json

    from open_clip import factory

    if isinstance(config, str):
        with open(config) as f:
            config = json.load(f)
    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise ValueError(
            "clip: model_config must be an open_clip config (dict or JSON file) with embed_dim, vision_cfg and text_cfg"
        )
    factory._MODEL_CONFIGS[model_name] = dict(
        config
    )  # open_clip keeps its registry here (add_model_config reads files only)


class CLIPScore(Reward):
    """``cos(E_img(image), E_txt(prompt))`` in [-1, 1].

    Args:
        model_name: open_clip architecture name.
        pretrained: open_clip pretrained tag, or a path to a checkpoint file.
        model_config: an open_clip model config (dict or JSON file) to register under ``model_name``.
        device: torch device (default: the trainer's device; standalone, CUDA when available).
        dtype: weights dtype, ``float32`` (default), ``bfloat16`` or ``float16`` (GPU); scores are float32.
        batch_size: images per forward pass.
    """

    name = "clip"

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        model_config: dict | str | None = None,
        device: str | None = None,
        batch_size: int = 32,
        dtype: str = "float32",
    ):
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError("the clip reward needs open_clip. Fix: pip install 'mrgrpo[clip]'.") from exc
        if model_config is not None:
            register_model_config(model_name, model_config)
        if batch_size < 1:
            raise ValueError(f"clip: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"clip: dtype must be one of {sorted(dtypes)}, got {dtype!r}")
        self.dtype = dtypes[dtype]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=self.device
            )
        except (RuntimeError, FileNotFoundError, ValueError) as exc:
            known = ", ".join(open_clip.list_models()[:8])
            raise RuntimeError(
                f"clip: cannot load model {model_name!r} with pretrained={pretrained!r}: {exc}. "
                f"model_name is an open_clip architecture (e.g. {known}, ...) or one given by model_config; "
                f"pretrained is an open_clip tag or a local checkpoint file."
            ) from exc
        self.model = model.to(self.dtype).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size
        self.model_name = model_name
        self.lock = threading.Lock()

    @torch.no_grad()
    def embed(self, images: list[Any], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-normalised image ``[N, D]`` and text ``[N, D]`` embeddings."""
        img_parts, txt_parts = [], []
        for i in range(0, len(images), self.batch_size):
            pix = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]]).to(
                self.device, self.dtype
            )
            tok = self.tokenizer(prompts[i : i + self.batch_size]).to(self.device)
            img_parts.append(torch.nn.functional.normalize(self.model.encode_image(pix).float(), dim=-1))
            txt_parts.append(torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1))
        return torch.cat(img_parts), torch.cat(txt_parts)

    def score(self, images, prompts, metadata):
        with self.lock:
            img, txt = self.embed(images, prompts)
        return RewardOutput((img * txt).sum(dim=-1).cpu(), details={"model": self.model_name})
