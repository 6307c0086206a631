"""LAION improved aesthetic predictor ("sac+logos+ava1-l14-linearMSE"): an MLP on CLIP ViT-L/14 image embeddings.

``r = MLP(E_img(image) / ||E_img(image)||)``: the unit-norm projected image embedding of
``openai/clip-vit-large-patch14`` (768-d) through the released five-layer head
(768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout between the first four, no activations), whose
state-dict keys are ``layers.{0,2,4,6,7}.{weight,bias}``. Scores are on the AVA 1-10 scale
(most images land in 4-7). The prompt is not used.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from mrgrpo.rewards import hf_clip
from mrgrpo.rewards.base import Reward, RewardOutput

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD_REPO = "camenduru/improved-aesthetic-predictor"
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class AestheticMLP(nn.Module):
    """The released head. ``forward([N, D]) -> [N, 1]``; keys ``layers.0/2/4/6/7`` as in the published file."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_head(path: str, input_size: int, who: str = "aesthetic") -> AestheticMLP:
    """The MLP head from a local ``.pth`` / ``.safetensors`` file, or ``repo_id/filename`` on the hub."""
    import os

    if not os.path.isfile(path):
        try:
            from huggingface_hub import hf_hub_download

            repo, _, fname = path.rpartition("/")
            path = hf_hub_download(repo, fname) if repo else path
        except Exception as exc:  # offline, unknown repo, ...
            raise RuntimeError(
                f"{who}: cannot find the head {path!r} ({exc}). Fix: pass `head` as a local file "
                f"or 'repo_id/filename' on the hub."
            ) from exc
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state: dict[str, Any] = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    head = AestheticMLP(input_size)
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise RuntimeError(
            f"{who}: {path} is not an aesthetic-predictor head for {input_size}-d embeddings "
            f"(expected keys layers.0/2/4/6/7.weight/bias): {str(exc)[:300]}"
        ) from exc
    return head


class Aesthetic(Reward):
    """LAION aesthetic score (1-10 scale) of each image.

    Args:
        model: CLIP model (hub id or local folder; default ``openai/clip-vit-large-patch14``).
        processor: its processor (default: the same as ``model``).
        head: the MLP weights, a local file or ``repo_id/filename`` (default
            ``camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth``).
        device, dtype: torch device and ``float32 | float16 | bfloat16`` of the CLIP model (the head runs in float32).
        batch_size: images per forward pass.
    """

    name = "aesthetic"

    def __init__(
        self,
        model: str = AESTHETIC_CLIP,
        processor: str | None = None,
        head: str = f"{AESTHETIC_HEAD_REPO}/{AESTHETIC_HEAD_FILE}",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"aesthetic: batch_size must be >= 1, got {batch_size}")
        self.device = hf_clip.resolve_device(device)
        self.dtype = hf_clip.resolve_dtype(dtype, self.device, self.name)
        self.model, self.processor = hf_clip.load_clip(model, processor, self.device, self.dtype, self.name)
        self.head = load_head(head, self.model.config.projection_dim).to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.lock = threading.Lock()

    def score(self, images, prompts, metadata):
        with self.lock, torch.no_grad():
            emb = hf_clip.image_embeds(self.model, self.processor, images, self.batch_size)
            scores = self.head(emb).squeeze(-1)
        return RewardOutput(scores.cpu(), details={"head": "laion-aesthetic-v2"})
