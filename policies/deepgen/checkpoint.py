"""Loading DeepGen checkpoints in the released layouts.

Accepted: flat state dicts in ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` files, possibly
wrapped in ``{"state_dict": ...}`` (or ``{"module": ...}`` / ``{"model": ...}``), or a directory
holding one (``model.safetensors`` first, else every weight file in it, shards merged).

Released keys (docs/policies.md, DeepGen): ``meta_queries``, ``projector_{1,2,3}.*``,
``connector.layers.{i}...`` (the SCB, component ``scb``), ``transformer.<diffusers SD3 names>``
(``transformer``), and the SFT VLM LoRA as
``lmm.model.language_model.layers.{i}...lora_{A,B}.default.weight`` /
``lmm.model.language_model.embed_tokens.lora_embedding_{A,B}.default`` (``vlm_lora``). Older
transformers wrote ``lmm.model.layers...`` / ``lmm.model.embed_tokens...`` / ``lmm.visual...``;
:func:`normalise_keys` rewrites them to the current module names. VAE and EMA keys are skipped.

Missing keys are judged per component: a checkpoint must hold ALL of a component's weights or
none of it (an RL checkpoint holds only ``transformer``; the SCB and the VLM LoRA then stay as
they are, e.g. from the SFT checkpoint loaded before). Unexpected keys, shape mismatches and
partially present components are listed by name in a :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mrgrpo.policies.common import CheckpointError, find_weight_files, read_state_dict  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from mrgrpo.policies.deepgen.weights import DeepGenWeights

log = logging.getLogger("mrgrpo.policies.deepgen")

SCB_PREFIXES = ("projector_1.", "projector_2.", "projector_3.", "connector.")
#: components a checkpoint may carry; each is loaded all-or-nothing
COMPONENTS = ("scb", "transformer", "transformer_lora", "vlm_lora", "vlm")
_IGNORED = ("vae.", "ema.")


def component_of(key: str) -> str:
    """``scb | transformer | transformer_lora | vlm_lora | vlm | vae | ema | other`` for a (normalised) key."""
    if key == "meta_queries" or key.startswith(SCB_PREFIXES):
        return "scb"
    if key.startswith("transformer."):
        return "transformer_lora" if "lora_" in key else "transformer"
    if key.startswith("lmm."):
        return "vlm_lora" if "lora_" in key else "vlm"
    if key.startswith(_IGNORED):
        return key.split(".")[0]
    return "other"


_RENAMES = [
    (re.compile(r"^(module|_orig_mod)\."), ""),
    (re.compile(r"^lmm\.base_model\.model\."), "lmm."),  # a PeftModel-wrapped VLM
    (
        re.compile(r"^lmm\.model\.(layers|embed_tokens|norm|rotary_emb)\."),
        r"lmm.model.language_model.\1.",
    ),  # transformers < 4.52
    (re.compile(r"^lmm\.visual\."), "lmm.model.visual."),
    (re.compile(r"^lmm\.lm_head\."), "lmm.lm_head."),
]
_DIT_TOP = ("pos_embed.", "time_text_embed.", "context_embedder.", "transformer_blocks.", "norm_out.", "proj_out.")


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite the older layouts to the current module names (idempotent).

    A bare diffusers DiT state dict (``transformer_blocks.0...`` with no ``transformer.`` prefix)
    gets the prefix, so a DiT saved on its own loads as an RL checkpoint.
    """
    out = {}
    for k, v in state.items():
        for pattern, repl in _RENAMES:
            k = pattern.sub(repl, k)
        out[k] = v
    if out and all(k.startswith(_DIT_TOP) for k in out):
        out = {f"transformer.{k}": v for k, v in out.items()}
    return out


def lora_spec_from_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, Any] | None:
    """LoRA structure held by ``state`` under ``prefix`` (e.g. ``"lmm."``).

    Returns ``{"rank", "rank_pattern", "target_modules"}`` (module names relative to ``prefix``)
    or None when there is no LoRA key. Ranks come from the ``lora_A`` shapes; alpha is not stored
    in state dicts (callers supply it).
    """
    ranks: dict[str, int] = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        m = re.match(rf"^{re.escape(prefix)}(.+)\.lora_A(?:\.[^.]+)?\.weight$", k) or re.match(
            rf"^{re.escape(prefix)}(.+)\.lora_embedding_A(?:\.[^.]+)?$", k
        )
        if m:
            ranks[m.group(1)] = int(v.shape[0])
    if not ranks:
        return None
    rank = Counter(ranks.values()).most_common(1)[0][0]
    return {
        "rank": rank,
        "rank_pattern": {n: r for n, r in ranks.items() if r != rank},
        "target_modules": sorted(ranks),
    }


@dataclass
class LoadReport:
    """What :func:`load_deepgen_checkpoint` did."""

    path: str
    loaded: dict[str, int] = field(default_factory=dict)  # component -> tensors loaded
    kept: list[str] = field(default_factory=list)  # model components the checkpoint does not hold (left as they were)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    skipped: int = 0  # vae./ema. tensors ignored

    @property
    def components(self) -> list[str]:
        return [c for c in COMPONENTS if self.loaded.get(c)]

    def __str__(self) -> str:
        parts = [f"{c}: {n} tensors" for c, n in self.loaded.items()]
        s = f"loaded {self.path} ({', '.join(parts) or 'nothing'})"
        if self.kept:
            s += f"; not in the checkpoint, kept as they were: {', '.join(self.kept)}"
        if self.skipped:
            s += f"; skipped {self.skipped} vae/ema tensors"
        return s


def _problems(report: LoadReport) -> list[str]:
    out = []

    def listing(keys: list[str]) -> str:
        shown = "\n    ".join(keys[:20])
        more = f"\n    ... and {len(keys) - 20} more" if len(keys) > 20 else ""
        return f"\n    {shown}{more}"

    if report.missing:
        out.append(
            f"{len(report.missing)} missing key(s) (the checkpoint holds only part of these "
            f"components):{listing(report.missing)}"
        )
    if report.unexpected:
        out.append(
            f"{len(report.unexpected)} unexpected key(s) (no such parameter in the model):{listing(report.unexpected)}"
        )
    if report.mismatched:
        out.append(f"{len(report.mismatched)} shape mismatch(es):{listing(report.mismatched)}")
    return out


def load_deepgen_checkpoint(
    model: DeepGenWeights, path: str | Path, *, strict: bool = True, state: dict[str, torch.Tensor] | None = None
) -> LoadReport:
    """Load a released (or flat) DeepGen checkpoint into ``model`` (a :class:`DeepGenPolicy`).

    Args:
        model: the policy; if the checkpoint holds a VLM LoRA (or DiT LoRA) the policy does not
            have yet, it is added first with the ranks and target modules read from the keys
            (``model.add_vlm_lora`` / ``model.add_dit_lora``).
        path: file or folder (see the module docstring).
        strict: raise :class:`CheckpointError` on missing / unexpected / mismatched keys (else
            warn and load what fits).
        state: an already-read state dict (``path`` then only names it in messages).

    Returns: a :class:`LoadReport` (also logged at INFO).
    """
    raw = state if state is not None else read_state_dict(path)
    state = normalise_keys(raw)
    skipped = sum(1 for k in state if k.startswith(_IGNORED))
    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED)}

    vlm_lora = lora_spec_from_state(state, "lmm.")
    if vlm_lora and not model.has_vlm_lora():
        model.add_vlm_lora({**vlm_lora, "alpha": 2 * vlm_lora["rank"]})  # released: r 64, alpha 128
    dit_lora = lora_spec_from_state(state, "transformer.")
    if dit_lora and getattr(model, "dit_lora", None) is None:
        log.warning(
            "%s holds a DiT LoRA but no alpha: using alpha = rank (scale 1); save() folders keep the real alpha", path
        )
        model.add_dit_lora(
            {"rank": dit_lora["rank"], "alpha": dit_lora["rank"], "target_modules": dit_lora["target_modules"]}
        )

    own = model.state_dict()
    report = LoadReport(str(path), skipped=skipped)
    loaded: list[str] = []
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape != v.shape:
            report.mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            loaded.append(k)
    present = {component_of(k) for k in state}
    params = [n for n, _ in model.named_parameters()]  # buffers (e.g. the DiT's fixed sin-cos table) are not required
    for comp in ("scb", "transformer", "transformer_lora", "vlm_lora"):
        own_keys = [k for k in params if component_of(k) == comp]
        if comp in present:
            report.missing += [k for k in own_keys if k not in state]
        elif own_keys:
            report.kept.append(comp)
    for k in loaded:
        c = component_of(k)
        report.loaded[c] = report.loaded.get(c, 0) + 1
    problems = _problems(report)
    if problems:
        msg = (
            f"checkpoint {path} does not fit the model:\n  "
            + "\n  ".join(problems)
            + "\n  Check that the base models (vlm / transformer), scb_layers, num_queries and the connector shape "
            "match the checkpoint."
        )
        if strict:
            raise CheckpointError(msg)
        log.warning(msg)
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k].to(own[k].dtype))
    log.info("%s", report)
    return report


def fetch_checkpoint_from_hub(spec: str) -> str:
    """``owner/name`` (whole repo) or ``owner/name/path/in/repo.pt`` (one file) from the Hugging Face hub."""
    parts = spec.split("/")
    if spec.startswith(("/", ".", "~")) or len(parts) < 2 or not all(parts):
        raise FileNotFoundError(f"DeepGen checkpoint {spec} does not exist (and is not a hub id owner/name[/file])")
    try:
        if len(parts) == 2:
            from huggingface_hub import snapshot_download

            return snapshot_download(spec)
        from huggingface_hub import hf_hub_download

        return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))
    except Exception as exc:  # offline, unknown repo or file
        raise FileNotFoundError(
            f"DeepGen checkpoint {spec}: not a local path, and the hub download failed: {exc}"
        ) from exc
