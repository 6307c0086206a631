"""GenEval's object detector on transformers: Mask2Former Swin-S COCO instance segmentation.

Replaces GenEval's mmdetection model (``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``) with
``facebook/mask2former-swin-small-coco-instance`` (same architecture and backbone, trained on
COCO by the Mask2Former authors rather than by mmdetection). :func:`instances_from_logits` is
mmdetection's Mask2Former instance post-processing: per-(query, class) scores ``softmax(class
logits)`` without the no-object column, the top ``max_per_image`` (100) of them, masks upsampled to
the image (bilinear), binarised at logit 0, score multiplied by the mean sigmoid inside the mask,
boxes as the masks' extents (``x2``/``y2`` exclusive). Images are resized as mmdetection's test
pipeline (shorter side 800, longer at most 1333) unless ``size`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mrgrpo.rewards.geneval.grader import Instances

MASK2FORMER = "facebook/mask2former-swin-small-coco-instance"
MMDET_TEST_SIZE = {"shortest_edge": 800, "longest_edge": 1333}


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[K, H, W]`` bool -> ``[K, 4]`` float ``x1, y1, x2, y2`` (exclusive ends; zeros for an empty mask),
    as mmdet's mask2bbox."""
    k, h, w = masks.shape
    boxes = torch.zeros(k, 4, dtype=torch.float32, device=masks.device)
    x_any, y_any = masks.any(dim=1), masks.any(dim=2)
    for i in range(k):
        xs, ys = torch.nonzero(x_any[i]).flatten(), torch.nonzero(y_any[i]).flatten()
        if len(xs) and len(ys):
            boxes[i] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()
    return boxes


def instances_from_logits(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    size: tuple[int, int],
    max_per_image: int = 100,
    min_score: float = 0.0,
    crop: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> Instances:
    """mmdet's Mask2Former instance post-processing for one image.

    Args:
        class_logits: ``[Q, C + 1]`` (last column: no object).
        mask_logits: ``[Q, h, w]`` mask logits (any resolution).
        size: the original image ``(H, W)``; masks end at this size.
        max_per_image: how many (query, class) pairs to keep.
        min_score: drop pairs whose class probability is <= this before the masks are computed. The final
            score is the class probability times a mask score <= 1, so a detection threshold t can pass
            ``min_score=t`` without changing which detections exceed t (only speed).
        crop: ``((Hp, Wp), (h, w))``: as mmdet, first upsample to the padded network input ``(Hp, Wp)``,
            keep its top-left ``(h, w)`` (the resized image without padding), then resize to ``size``.
    """
    q, c1 = class_logits.shape
    num_classes = c1 - 1
    scores = class_logits.float().softmax(-1)[:, :-1]
    k = min(max_per_image, q * num_classes)
    top_scores, top_idx = scores.flatten().topk(k)
    keep = top_scores > min_score
    top_scores, top_idx = top_scores[keep], top_idx[keep]
    labels, queries = top_idx % num_classes, top_idx // num_classes
    if not len(queries):
        return Instances(
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.float32),
            np.zeros((0, 4), dtype=np.float32),
            np.zeros((0, *size), dtype=bool),
        )
    uniq, inverse = torch.unique(queries, return_inverse=True)  # each query's mask is computed once
    m = mask_logits[uniq][None].float()
    if crop is not None:
        (hp, wp), (h, w) = crop
        m = F.interpolate(m, size=(hp, wp), mode="bilinear", align_corners=False)[:, :, :h, :w]
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0]
    binary = m > 0
    mask_scores = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    boxes = masks_to_boxes(binary)
    det_scores = top_scores * mask_scores[inverse]
    return Instances(
        labels.cpu().numpy(), det_scores.cpu().numpy(), boxes[inverse].cpu().numpy(), binary[inverse].cpu().numpy()
    )


class Mask2FormerDetector:
    """Batched instance detection with a transformers Mask2Former.

    Args:
        model: hub id or local folder of a ``Mask2FormerForUniversalSegmentation``
            (default the Swin-S COCO instance model).
        processor: hub id or folder of its image processor (default: ``model``).
        size: resize rule for the processor (default mmdet's test size, shorter side 800 / longer <= 1333;
            ``None`` keeps the processor's own).
        device, dtype: where and in what precision the model runs (post-processing is float32).
        max_per_image, min_score: see :func:`instances_from_logits`.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: str = MASK2FORMER,
        processor: str | None = None,
        size: dict | None = MMDET_TEST_SIZE,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
        max_per_image: int = 100,
        min_score: float = 0.0,
    ):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        try:
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model, dtype=dtype)
            self.processor = AutoImageProcessor.from_pretrained(processor or model)
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"geneval: cannot load the detector {model!r} ({exc}). Fix: pass `detector` as a hub "
                "id or local folder of a Mask2Former instance-segmentation model."
            ) from exc
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.size, self.batch_size, self.max_per_image, self.min_score = size, batch_size, max_per_image, min_score
        self.num_classes = self.model.config.num_labels

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> list[Instances]:
        """One :class:`Instances` per PIL image, boxes and masks at the image's own size."""
        out: list[Instances] = []
        for i in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            kw = {"size": self.size} if self.size else {}
            inputs = self.processor(images=chunk, return_tensors="pt", **kw)
            pix = inputs["pixel_values"].to(self.model.device, self.model.dtype)
            mask = inputs.get("pixel_mask")
            res = self.model(pixel_values=pix, pixel_mask=None if mask is None else mask.to(self.model.device))
            hp, wp = pix.shape[-2:]
            for j, im in enumerate(chunk):
                # the resized image's content (the rest is batch / size-divisor padding)
                h = int(mask[j].any(dim=1).sum()) if mask is not None else hp
                w = int(mask[j].any(dim=0).sum()) if mask is not None else wp
                out.append(
                    instances_from_logits(
                        res.class_queries_logits[j],
                        res.masks_queries_logits[j],
                        (im.height, im.width),
                        self.max_per_image,
                        self.min_score,
                        crop=((hp, wp), (h, w)),
                    )
                )
        return out
