"""The SFT batch: what the data stream hands to a policy's ``flow_matching_loss``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from mrgrpo.imaging import to_tensor
from mrgrpo.sft_data.samples import Kind, Sample

KINDS: tuple[str, ...] = ("t2i", "edit")


@dataclass
class SFTBatch:
    """One batch of SFT targets of one size, with their texts and (editing) input images.

    Attributes:
        images: ``[B, 3, H, W]`` float32 in [0, 1], the target images (pixels; H, W multiples of 32).
        prompts: ``B`` texts; ``""`` where the caption was dropped (text-to-image only).
        ref_images: for editing, ``B`` lists of input images (PIL RGB, each sized to the pixel
            budget); ``None`` for text-to-image.
        kind: ``"t2i"`` or ``"edit"``.
        source: name of the data source the batch came from (for logs).

    Raises:
        ValueError: ``images`` is not ``[B, 3, H, W]``, or ``prompts`` / ``ref_images`` do not hold
            ``B`` entries, or ``kind`` is unknown.
    """

    images: torch.Tensor
    prompts: list[str]
    ref_images: list[list[Image.Image]] | None = None
    kind: Kind = "t2i"
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"SFTBatch.images must be [B, 3, H, W], got {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if len(self.prompts) != n:
            raise ValueError(f"SFTBatch: {n} images for {len(self.prompts)} prompts")
        if self.ref_images is not None and len(self.ref_images) != n:
            raise ValueError(f"SFTBatch: {n} images for {len(self.ref_images)} lists of reference images")
        if self.kind not in KINDS:
            raise ValueError(f"SFTBatch.kind must be t2i | edit, got {self.kind!r}")

    def __len__(self) -> int:
        """The number of samples ``B``."""
        return len(self.prompts)


def collate(samples: Sequence[Sample], prompts: Sequence[str], kind: Kind, source: str) -> SFTBatch:
    """An :class:`SFTBatch` of same-size ``samples`` with the given ``prompts`` (after caption dropout).

    Editing batches carry each sample's input images; text-to-image batches carry none.
    """
    return SFTBatch(
        images=torch.stack([to_tensor(s.image) for s in samples]),
        prompts=list(prompts),
        ref_images=[list(s.refs) for s in samples] if kind == "edit" else None,
        kind=kind,
        source=source,
    )


__all__ = ["KINDS", "SFTBatch", "collate"]
