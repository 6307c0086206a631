"""HPS v2.1 (Human Preference Score v2.1, Wu et al., 2023): a fine-tuned open_clip ViT-H-14.

``r = cos(E_img(image), E_txt(prompt))`` (the HPSv2 reference code's ``image_features @
text_features.T`` diagonal on unit-norm features; no logit scale), so scores are in [-1, 1] and
typically 0.2-0.35. Images are resized as HPSv2's evaluation transform: the longest side to 224,
padded to a square (black), bicubic. Weights: ``HPS_v2.1_compressed.pt`` of the hub repo ``xswu/HPSv2``, a
``{"state_dict": ...}`` file in open_clip's key layout (a ``module.`` prefix from DDP is stripped).
"""

from __future__ import annotations

import os
import threading

import torch

from mrgrpo.rewards import hf_clip
from mrgrpo.rewards.base import Reward, RewardOutput

HPS_CHECKPOINT = "xswu/HPSv2/HPS_v2.1_compressed.pt"


def hps_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The open_clip state dict of an HPS checkpoint file (``{"state_dict": ...}`` or a bare state dict)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"hpsv2: {path} holds no state dict (expected {{'state_dict': ...}})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _resolve(path: str) -> str:
    if os.path.isfile(path):
        return path
    repo, _, fname = path.rpartition("/")
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo, fname)
    except Exception as exc:
        raise RuntimeError(
            f"hpsv2: cannot find the checkpoint {path!r} ({exc}). Fix: pass `checkpoint` as a local "
            "file or 'repo_id/filename' on the hub (default xswu/HPSv2/HPS_v2.1_compressed.pt)."
        ) from exc


class HPSv2(Reward):
    """HPS v2.1 score of each image for its prompt (cosine in [-1, 1]).

    Args:
        checkpoint: local file or ``repo_id/filename`` (default ``xswu/HPSv2/HPS_v2.1_compressed.pt``).
        model_name: open_clip architecture (``ViT-H-14``).
        model_config: an open_clip config (dict or JSON file) registered under ``model_name``
            (custom / tiny architectures).
        device, dtype: torch device and ``float32 | float16 | bfloat16``.
        batch_size: images per forward pass.
    """

    name = "hpsv2"

    def __init__(
        self,
        checkpoint: str = HPS_CHECKPOINT,
        model_name: str = "ViT-H-14",
        model_config: dict | str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
    ):
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError("the hpsv2 reward needs open_clip. Fix: pip install 'mrgrpo[hps]'.") from exc
        from mrgrpo.rewards.clip import register_model_config

        if batch_size < 1:
            raise ValueError(f"hpsv2: batch_size must be >= 1, got {batch_size}")
        if model_config is not None:
            register_model_config(model_name, model_config)
        self.device = hf_clip.resolve_device(device)
        self.dtype = hf_clip.resolve_dtype(dtype, self.device, self.name)
        try:
            model = open_clip.create_model(model_name, pretrained=None)
        except RuntimeError as exc:
            raise RuntimeError(f"hpsv2: unknown open_clip architecture {model_name!r} ({exc})") from exc
        path = _resolve(checkpoint)
        try:
            model.load_state_dict(hps_state_dict(path))
        except RuntimeError as exc:
            raise RuntimeError(f"hpsv2: {path} does not fit open_clip {model_name!r}: {str(exc)[:300]}") from exc
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        # HPSv2's evaluation transform: longest side to the model size, padded to a square (fill 0), not cropped
        self.preprocess = open_clip.image_transform(
            model.visual.image_size,
            is_train=False,
            mean=getattr(model.visual, "image_mean", None),
            std=getattr(model.visual, "image_std", None),
            resize_mode="longest",
        )
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size
        self.lock = threading.Lock()

    @torch.no_grad()
    def score(self, images, prompts, metadata):
        parts = []
        with self.lock:
            for i in range(0, len(images), self.batch_size):
                pix = torch.stack([self.preprocess(im) for im in hf_clip.rgb(images[i : i + self.batch_size])])
                tok = self.tokenizer(list(prompts[i : i + self.batch_size]))
                fi = self.model.encode_image(pix.to(self.device, self.dtype), normalize=True).float()
                ft = self.model.encode_text(tok.to(self.device), normalize=True).float()
                parts.append((fi * ft).sum(-1).cpu())
        return RewardOutput(torch.cat(parts) if parts else torch.zeros(0), details={"model": "hps-v2.1"})
