"""Shared parts of the toy-size random-init models the tests and the CPU quickstart build locally.

Nothing is downloaded: tokenizers are built with ``tokenizers``, models from configs. Builds go to
a temporary folder and are published atomically (:func:`publish_dir`) into
:func:`tiny_cache_root` (``$MRGRPO_CACHE/tiny``, else ``~/.cache/mrgrpo/tiny``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: the Qwen2.5-VL special tokens (the tiny Qwen tokenizers hold them; other tiny models use them as pad / eos)
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def byte_level_tokenizer(
    specials: Sequence[str] = QWEN_SPECIALS,
    eos: str = "<|im_end|>",
    pad: str = "<|endoftext|>",
    model_max_length: int = 4096,
) -> Any:
    """A byte-level BPE tokenizer over the 256 bytes (no merges) plus ``specials``, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=pad, model_max_length=model_max_length
    )


def tiny_cache_root() -> Path:
    """Where tiny model folders are cached: ``$MRGRPO_CACHE/tiny`` (else ``~/.cache/mrgrpo/tiny``)."""
    return Path(os.environ.get("MRGRPO_CACHE", Path.home() / ".cache" / "mrgrpo")) / "tiny"


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished build folder into place atomically; if another process published first, keep theirs."""
    try:
        os.replace(tmp, out)  # fails when ``out`` already exists and is not empty
    except OSError:
        if not out.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def build_once(out: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``out`` once it holds ``marker``; else ``build(tmp)`` into a fresh temporary sibling, then publish it."""
    if (out / marker).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out)
    return out


def tiny_vae(scaling_factor: float = 1.5305, shift_factor: float = 0.0609) -> Any:
    """A random-init 16-channel ``AutoencoderKL`` of SD3 / FLUX's layout (4 levels, 8x down), a few thousand
    parameters; the default scaling / shift are SD3's."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        latent_channels=16,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )
