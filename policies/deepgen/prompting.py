"""DeepGen's VLM inputs: the prompt templates, the ViT patch packing of reference images, and the
left-padded token rows with the think-token placeholders appended.

Pure functions of their arguments; :class:`~mrgrpo.policies.deepgen.policy.DeepGenPolicy` calls them with
its tokenizer and its VLM's vision settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

T2I_TEMPLATE = "<|im_start|>user\nGenerate an image: {prompt}<|im_end|>\n<|im_start|>assistant\n"
EDIT_TEMPLATE = "<|im_start|>user\n{images}\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
IMAGE_SLOT = "<|vision_start|>{pads}<|vision_end|>"
#: CLIP normalisation of the ViT input (Qwen2.5-VL's image processor uses the same)
VIT_MEAN = (0.48145466, 0.4578275, 0.40821073)
VIT_STD = (0.26862954, 0.26130258, 0.27577711)


def prompt_text(prompt: str, image_token: str, num_refs: int = 0, ref_tokens: Sequence[int] = ()) -> str:
    """The VLM prompt (before the think tokens): the T2I template (``num_refs`` 0), or the editing one with one
    image slot of ``ref_tokens[i]`` image tokens per reference."""
    if not num_refs:
        return T2I_TEMPLATE.format(prompt=prompt)
    slots = "".join(IMAGE_SLOT.format(pads=image_token * n) for n in ref_tokens)
    return EDIT_TEMPLATE.format(images=slots, prompt=prompt)


def vit_patches(pixels: torch.Tensor, patch: int, merge: int, temporal_patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL ViT input of one reference ``[3, H, W]`` in [0, 1] (sides multiples of 32).

    Resized by 28/32 (bilinear, as released), CLIP-normalised, packed into patches of ``patch`` px merged
    ``merge x merge``: returns ``patches [(H'/patch)(W'/patch), 3 * temporal_patch * patch * patch]`` and
    ``grid_thw [1, 3]``; the ViT then gives ``(H/32)(W/32)`` tokens (patch 14, merge 2).
    """
    x = F.interpolate(pixels[None].float(), scale_factor=28 / 32, mode="bilinear")[0]
    mean = torch.tensor(VIT_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(VIT_STD, dtype=x.dtype).view(3, 1, 1)
    x = (x - mean) / std
    c, h, w = x.shape
    p, m, tp = patch, merge, temporal_patch
    gh, gw = h // p, w // p
    if gh % m or gw % m:
        raise ValueError(
            f"reference of {pixels.shape[-1]}x{pixels.shape[-2]} px does not pack into ViT patches; sides must "
            "be multiples of 32"
        )
    x = x[None].expand(tp, c, h, w)  # one frame repeated over the temporal patch
    x = x.reshape(tp, c, gh // m, m, p, gw // m, m, p).permute(2, 5, 3, 6, 1, 0, 4, 7)  # gh/m gw/m m m c tp p p
    return x.reshape(gh * gw, c * tp * p * p), torch.tensor([[1, gh, gw]])


def left_padded_rows(
    rows: Sequence[list[int]], truncate: Sequence[bool], max_tokens: int | None, pad_id: int, num_queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids ``[B, L]`` and mask ``[B, L]`` (long) of token ``rows``, each with ``num_queries``
    placeholders (``pad_id``, replaced by the think tokens) appended; rows flagged in ``truncate`` keep their
    last ``max_tokens`` tokens (no cut when ``max_tokens`` is None or 0)."""
    if max_tokens:
        rows = [r[-max_tokens:] if cut else r for r, cut in zip(rows, truncate)]
    rows = [list(r) + [pad_id] * num_queries for r in rows]
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, longest - len(r) :] = torch.tensor(r)
        mask[i, longest - len(r) :] = 1
    return ids, mask
