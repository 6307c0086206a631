"""GenEval's colour check: CLIP ViT-L/14 zero-shot over ten colours, on each object's masked crop.

As the official grader: the object's mask pastes the image onto a ``#999`` grey background, the
result is cropped to the object's box, and CLIP classifies it among GenEval's ten colours with a
classifier built from three templates ("a photo of a {c} {object}", "a photo of a {c}-colored
{object}", "a photo of a {c} object"; template embeddings unit-normalised, averaged, normalised
again). Runs on a transformers ``CLIPModel`` (``openai/clip-vit-large-patch14``, the weights of
open_clip's ``ViT-L-14``/``openai`` that GenEval uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mrgrpo.rewards import hf_clip
from mrgrpo.rewards.geneval.grader import COLORS, Obj

TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")


def object_crop(image: Any, obj: Obj, background: str = "#999") -> Any:
    """The object's pixels on a grey background (where it has a mask), cropped to its box (PIL rounding)."""
    from PIL import Image

    image = image.convert("RGB")
    box, mask = obj
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"geneval: mask of shape {mask.shape} for an image of size {image.size}")
        blank = Image.new("RGB", image.size, color=background)
        image = Image.composite(image, blank, Image.fromarray(mask.astype(np.uint8) * 255))
    return image.crop(tuple(float(v) for v in box[:4]))


class ColorClassifier:
    """``classify(image, objects, classname) -> [colour, ...]``, one of :data:`COLORS` per object."""

    def __init__(self, model: Any, processor: Any, batch_size: int = 16):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self._weights: dict[str, torch.Tensor] = {}

    def weights(self, classname: str) -> torch.Tensor:
        """``[D, 10]`` zero-shot classifier for one object class (cached)."""
        if classname not in self._weights:
            cols = []
            for c in COLORS:
                emb = hf_clip.text_embeds(
                    self.model, self.processor, [t.format(c=c, obj=classname) for t in TEMPLATES], len(TEMPLATES)
                )
                cols.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
            self._weights[classname] = torch.stack(cols, dim=1)
        return self._weights[classname]

    def __call__(self, image: Any, objects: Sequence[Obj], classname: str) -> list[str]:
        if not objects:
            return []
        crops = [object_crop(image, o) for o in objects]
        emb = hf_clip.image_embeds(self.model, self.processor, crops, self.batch_size)
        return [COLORS[i] for i in (emb @ self.weights(classname)).argmax(1).tolist()]
