"""PickScore: the CLIP-H preference model of Pick-a-Pic (Kirstain et al., 2023).

``r = logit_scale.exp() * cos(E_img(image), E_txt(prompt))`` with the released model
``yuvalkirstain/PickScore_v1`` (a transformers ``CLIPModel``, ViT-H/14) and the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: the paper's scale (``logit_scale.exp()`` is ~100, so
typical scores are ~18-24). ``divisor`` rescales for RL (Flow-GRPO divides by 26).
"""

from __future__ import annotations

import threading

from mrgrpo.rewards import hf_clip
from mrgrpo.rewards.base import Reward, RewardOutput

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(Reward):
    """PickScore of each image for its prompt, ``logit_scale.exp() * cosine / divisor``.

    Args:
        model: hub id or local folder of the CLIPModel (default ``yuvalkirstain/PickScore_v1``).
        processor: hub id or local folder of the processor (default the LAION CLIP-ViT-H-14 one).
        divisor: the score is divided by it (1 = the paper's scale; Flow-GRPO uses 26).
        device, dtype: torch device (default CUDA when available) and ``float32 | float16 | bfloat16``.
        batch_size: images per forward pass.
    """

    name = "pickscore"

    def __init__(
        self,
        model: str = PICKSCORE_MODEL,
        processor: str | None = PICKSCORE_PROCESSOR,
        divisor: float = 1.0,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
    ):
        if batch_size < 1 or divisor <= 0:
            raise ValueError(f"pickscore: batch_size must be >= 1 and divisor > 0, got {batch_size}, {divisor}")
        self.device = hf_clip.resolve_device(device)
        self.dtype = hf_clip.resolve_dtype(dtype, self.device, self.name)
        self.model, self.processor = hf_clip.load_clip(model, processor, self.device, self.dtype, self.name)
        self.divisor, self.batch_size, self.model_id = float(divisor), batch_size, model
        self.lock = threading.Lock()

    def score(self, images, prompts, metadata):
        with self.lock:
            img = hf_clip.image_embeds(self.model, self.processor, images, self.batch_size)
            txt = hf_clip.text_embeds(self.model, self.processor, prompts, self.batch_size)
            scale = self.model.logit_scale.float().exp()
        scores = scale * (img * txt).sum(-1) / self.divisor
        return RewardOutput(scores.cpu(), details={"model": self.model_id, "logit_scale": float(scale)})
