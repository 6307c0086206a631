"""Checks before expensive work: everything a recipe's names and files can tell, before a model is built.

``mrgrpo recipes validate`` and the start of ``mrgrpo train`` run :func:`preflight` on a loaded recipe
(``mrgrpo.config.load_recipe`` has already checked the schema and the cross-field rules). It checks,
in about a second (it imports the modules of the registered factories, no model code runs):

* registry names: ``policy.name`` and every reward's name resolve (built-in, dotted path or plug-in);
* factory keyword arguments: ``policy.kwargs`` and each ``rewards.<name>.kwargs`` against the
  factory's signature (unknown names, missing required arguments; a factory taking ``**kwargs`` that
  it forwards to the class its return annotation names is checked against that class);
* prompt files (``data.sources``, ``eval.sources``): a readable UTF-8 text file of a known format
  that holds at least one prompt (every line parsed, editing references present);
* SFT records (``data.sft_sources``): readable UTF-8 JSON with at least one usable record whose
  image exists; WebDataset shards that exist;
* ``output_dir``: not a file, inside a writable folder; its ``checkpoints``/``config.yaml`` not of
  the wrong kind;
* ``policy.checkpoint`` and path-looking kwargs (``/...``, ``./...``, ``~/...``, ``*.safetensors``):
  they exist (hub ids such as ``org/model`` are left to the factory);
* ``train.resume``: an intact checkpoint folder (``auto`` is resolved by the trainer, which falls back
  to the newest intact checkpoint);
* ``distributed.accelerate_config``: a readable YAML mapping.

All problems are collected and raised together as one :class:`~mrgrpo.config.RecipeError`.
"""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrgrpo.config import RecipeError, RunConfig, read_text_file

#: image paths checked per SFT source (a stat each) for "does any record's image exist"
_SFT_IMAGE_PROBE = 256


# --------------------------------------------------------------------------------------
# factory signatures
# --------------------------------------------------------------------------------------
def factory_parameters(factory: Callable[..., Any]) -> tuple[set[str] | None, set[str]]:
    """``(accepted keyword names or None for "anything", required names)`` of a registry factory.

    A class is read through its ``__init__``. A function taking ``**kwargs`` declares what they may
    be with a ``mrgrpo_kwargs`` attribute (a function returning the names), or forwards them to the
    class its return annotation names (that class's ``__init__`` decides); otherwise anything goes.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None, set()
    params = list(sig.parameters.values())
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty}
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return named, required
    declared = getattr(factory, "mrgrpo_kwargs", None)  # a factory may declare what its **kwargs take
    if callable(declared):
        return named | set(declared()), required
    target = _return_class(factory)
    if target is None or target is factory:
        return None, required
    inner, _ = factory_parameters(target)
    return (None if inner is None else named | inner), required


def _return_class(factory: Callable[..., Any]) -> type | None:
    if isinstance(factory, type):
        return None
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only means "cannot tell"
        return None
    ret = hints.get("return")
    return ret if isinstance(ret, type) else None


def built_from(field: str, what: str, build: Callable[[], Any], given: Any = None) -> Any:
    """``build()``, with the errors a factory raises for bad arguments (``TypeError``, ``ValueError``, ``OSError``:
    a wrong value, a model path or id that does not load) turned into a ``RecipeError`` naming ``field`` (and the
    ``given`` values)."""
    from mrgrpo.errors import MrgrpoError

    try:
        return build()
    except MrgrpoError:
        raise
    except (TypeError, ValueError, OSError) as exc:
        shown = "" if given is None else f" from {given!r}"[:200]
        raise RecipeError(
            f"field `{field}`: {what} could not be built{shown} ({type(exc).__name__}: {str(exc)[:300]}). "
            f"Fix: check the values under `{field}` (model paths or hub ids, names, types); "
            "--debug shows where it failed."
        ) from exc


def check_factory_kwargs(
    factory: Callable[..., Any], kwargs: dict[str, Any], field: str, what: str, check_required: bool = True
) -> list[str]:
    """Problems (one line each) of calling ``factory(**kwargs)``; ``field`` names the recipe's kwargs."""
    accepted, required = factory_parameters(factory)
    problems = []
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            problems.append(
                f"field `{field}`: {what} does not take {', '.join(map(repr, unknown))}. "
                f"Fix: remove or rename it; it accepts: {', '.join(sorted(accepted)) or '(no arguments)'}."
            )
    if check_required:
        absent = sorted(required - set(kwargs))
        if absent:
            problems.append(
                f"field `{field}`: {what} needs {', '.join(map(repr, absent))}. Fix: add it under `{field}`."
            )
    return problems


def _lookup(registry: Any, name: str, field: str) -> tuple[Any, str | None]:
    """``(factory, None)`` or ``(None, problem)`` for a registry name (imports its module only)."""
    from mrgrpo.registry import RegistryError

    try:
        return registry.get(name), None
    except RegistryError as exc:
        return None, f"field `{field}`: {exc}"
    except Exception as exc:  # noqa: BLE001 - a plug-in module that fails to import
        return None, (
            f"field `{field}`: the {registry.kind} {name!r} could not be loaded ({type(exc).__name__}: {exc}). "
            "Fix: check the module path and that its dependencies are installed."
        )


def check_registry(cfg: RunConfig) -> list[str]:
    """Problems with ``policy.name``/``policy.kwargs`` and every reward's name and kwargs."""
    from mrgrpo.registry import POLICIES, REWARDS

    problems = []
    factory, problem = _lookup(POLICIES, cfg.policy.name, "policy.name")
    if problem:
        problems.append(problem)
    else:
        problems += check_factory_kwargs(factory, cfg.policy.kwargs, "policy.kwargs", f"policy {cfg.policy.name!r}")
    for key, spec in sorted(cfg.rewards.items()):
        name = spec.name or key
        field = f"rewards.{key}.name" if spec.name else f"rewards.{key}"
        factory, problem = _lookup(REWARDS, name, field)
        if problem:
            problems.append(problem)
            continue
        # as mrgrpo.rewards.base.build_reward: a plain scoring function without kwargs is used as is
        if isinstance(factory, type) or spec.kwargs or getattr(factory, "_mrgrpo_factory", False):
            problems += check_factory_kwargs(factory, spec.kwargs, f"rewards.{key}.kwargs", f"reward {name!r}")
    return problems


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def _looks_local(value: str) -> bool:
    """A string a user meant as a local path (not a hub id like ``org/model``): absolute, ``./``, ``../``, ``~``,
    or ending in a weights suffix."""
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt"))


def check_local_paths(cfg: RunConfig) -> list[str]:
    """``policy.checkpoint`` and path-looking string kwargs of the policy and rewards exist."""
    from mrgrpo.config import expand_vars

    problems: list[str] = []
    if cfg.policy.checkpoint:
        try:
            expanded = expand_vars(cfg.policy.checkpoint, "policy.checkpoint")
        except RecipeError as exc:
            problems.append(str(exc))
            expanded = ""
        path = cfg.resolve_path(expanded) if expanded else None
        if path is not None and _looks_local(expanded) and not path.exists():
            problems.append(
                f"field `policy.checkpoint`: {cfg.policy.checkpoint!r} does not exist (looked at {path}). Fix: "
                "point it at the local weights (relative paths are taken from the recipe's folder), or give a hub id."
            )
    items = [(f"policy.kwargs.{k}", v) for k, v in cfg.policy.kwargs.items()]
    items += [
        (f"rewards.{name}.kwargs.{k}", v) for name, spec in sorted(cfg.rewards.items()) for k, v in spec.kwargs.items()
    ]
    for field, value in items:
        key = field.rsplit(".", 1)[-1]
        if not isinstance(value, str) or not _looks_local(value) or "cache" in key or "out" in key:
            continue  # folders the factory creates (cache_dir, output_dir) need not exist
        path = Path(os.path.expanduser(value))  # factories get kwargs as written: relative to the working directory
        if not path.exists():
            problems.append(
                f"field `{field}`: {value!r} does not exist (looked at {path.absolute()}). Fix: point it at the "
                "local file or folder, or give a hub id (org/name)."
            )
    return problems


def _resolve(cfg: RunConfig, path: str, field: str, problems: list[str]) -> Path | None:
    try:
        return cfg.resolve_path(path, field)
    except RecipeError as exc:
        problems.append(str(exc))
        return None


def check_prompt_files(cfg: RunConfig, warnings: list[str]) -> list[str]:
    """Every prompt source loads: readable UTF-8, known format, at least one prompt."""
    from mrgrpo.prompts import load_prompt_file

    problems: list[str] = []
    for prefix, sources in (("data.sources", cfg.data.sources), ("eval.sources", cfg.eval.sources)):
        for i, src in enumerate(sources):
            field = f"{prefix}.{i}.path"
            path = _resolve(cfg, src.path, field, problems)
            if path is None:
                continue
            if not path.exists() and not src.required:
                warnings.append(f"{field}: {path} does not exist; source {src.name!r} is skipped (required: false)")
                continue
            fix = "point it at a prompt file (.txt one prompt a line, .jsonl, .csv)"
            try:
                read_text_file(path, f"field `{field}`: prompt file", fix)
                load_prompt_file(path, source=src.name, fmt=src.format, kind=src.kind)
            except RecipeError as exc:
                text = str(exc)
                problems.append(text if text.startswith("field `") else f"field `{field}`: {text}")
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                problems.append(f"field `{field}`: prompt file {path} cannot be read ({exc}). Fix: {fix}.")
    return problems


def check_sft_files(cfg: RunConfig, warnings: list[str], training: bool = False) -> list[str]:
    """SFT records parse and name at least one existing image; shards exist; with ``training``, a
    pretrain/SFT run has at least one source."""
    problems: list[str] = []
    available = 0
    for i, src in enumerate(cfg.data.sft_sources):
        field = f"data.sft_sources.{i}.path"
        path = _resolve(cfg, src.path, field, problems)
        root = _resolve(cfg, src.image_root, f"data.sft_sources.{i}.image_root", problems) if src.image_root else None
        if path is None:
            continue
        if src.format == "webdataset":
            from mrgrpo.sft_data.webdataset import expand_shards

            try:
                found = expand_shards(str(path))
            except Exception as exc:  # noqa: BLE001 - a malformed brace pattern
                problems.append(
                    f"field `{field}`: {src.path!r} is not a valid shard pattern ({exc}). "
                    "Fix: e.g. shards/{000..009}.tar."
                )
                continue
            if not found and src.required:
                problems.append(
                    f"field `{field}`: no WebDataset shard matches {path}. Fix: point it at your shards or "
                    "set `required: false`."
                )
            elif not found:
                warnings.append(
                    f"{field}: no WebDataset shard matches {path}; SFT source {src.name!r} is skipped (required: false)"
                )
            else:
                available += 1
            continue
        if not path.exists():
            if not src.required:
                warnings.append(f"{field}: {path} does not exist; SFT source {src.name!r} is skipped (required: false)")
            continue  # a missing required path is reported by load_recipe
        found_problems = _check_sft_records(path, src, field, root)
        problems += found_problems
        available += not found_problems
    if training and cfg.stage in ("pretrain", "sft") and cfg.data.sft_sources and not available and not problems:
        problems.append(
            f"field `data.sft_sources`: none of the {len(cfg.data.sft_sources)} source(s) exists, and the "
            f"{cfg.stage} stage trains on images. Fix: point a source at your data (`mrgrpo data synth --out DIR` "
            "writes a small data set)."
        )
    return problems


def _check_sft_records(path: Path, src: Any, field: str, root: Path | None) -> list[str]:
    from mrgrpo.sft_data import DataStats, load_records, records_files

    files = records_files(path)
    if not files:
        return [
            f"field `{field}`: {path} holds no .json/.jsonl records file. "
            "Fix: point it at a records file or a folder of them."
        ]
    fix = "a JSON list of records or one JSON object per line (.jsonl); see docs/sft_data.md"
    try:
        for f in files:
            read_text_file(f, f"field `{field}`: records file", fix)
        stats = DataStats()
        records = load_records(path, src.format, src.caption_key, root, stats, src.name)
    except RecipeError as exc:
        return [str(exc) if str(exc).startswith("field `") else f"field `{field}`: {exc}"]
    if not records:
        return [
            f"field `{field}`: no usable {src.format!r} record in {[str(f) for f in files]} (every record lacks an "
            f"image path or text). Fix: check `format:` ({src.format}) and the record keys (docs/sft_data.md)."
        ]
    probe = records[:_SFT_IMAGE_PROBE]
    if not any(Path(r.image).is_file() for r in probe):
        return [
            f"field `{field}`: none of the first {len(probe)} records' images exists (e.g. {probe[0].image}). "
            "Fix: check "
            "`image_root` (relative image paths are taken from it, else from the records file's folder)."
        ]
    return []


def check_output_dir(cfg: RunConfig) -> list[str]:
    """``output_dir`` is (or can become) a writable folder; what the run writes there is not of the wrong kind."""
    out = Path(cfg.output_dir)
    field = "output_dir"
    if out.exists() and not out.is_dir():
        return [
            f"field `{field}`: {str(out)!r} is a file, not a folder. Fix: choose another output_dir (runs write "
            "config.yaml, metrics.jsonl, checkpoints/ and samples/ inside it)."
        ]
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return [
            f"field `{field}`: {str(out)!r} cannot be created: {str(probe)!r} is a file. "
            "Fix: choose another output_dir."
        ]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            f"field `{field}`: {str(out)!r} is not writable (no write permission on {str(probe)!r}). "
            "Fix: choose a folder you can write to."
        ]
    problems = []
    for name, want_dir in (("checkpoints", True), ("samples", True), ("config.yaml", False), ("metrics.jsonl", False)):
        p = out / name
        if p.exists() and p.is_dir() != want_dir:
            problems.append(
                f"field `{field}`: {p} is a {'file' if want_dir else 'folder'}, where the run writes a "
                f"{'folder' if want_dir else 'file'}. Fix: remove it or choose another output_dir."
            )
    return problems


def check_resume(cfg: RunConfig) -> list[str]:
    """An explicit ``train.resume`` folder is an intact checkpoint."""
    resume = cfg.train.resume
    if resume in (None, "auto"):
        return []
    from mrgrpo.checkpoint import verify_checkpoint
    from mrgrpo.errors import CheckpointError

    try:
        verify_checkpoint(Path(resume))
    except CheckpointError as exc:
        return [f"field `train.resume`: {exc}"]
    return []


def check_accelerate_config(cfg: RunConfig) -> list[str]:
    path_text = cfg.distributed.accelerate_config
    if not path_text:
        return []
    import yaml

    field = "distributed.accelerate_config"
    problems: list[str] = []
    path = _resolve(cfg, path_text, field, problems)
    if path is None or not path.exists():
        return problems  # a missing file is reported by load_recipe
    try:
        data = yaml.safe_load(read_text_file(path, f"field `{field}`:", "point it at a file in recipes/accelerate/"))
    except RecipeError as exc:
        return [str(exc)]
    except yaml.YAMLError as exc:
        return [
            f"field `{field}`: {path} is not valid YAML ({exc}). Fix: correct it or use one of recipes/accelerate/."
        ]
    if not isinstance(data, dict):
        return [f"field `{field}`: {path} is not a YAML mapping. Fix: use one of recipes/accelerate/ as a template."]
    return []


def check_environment(cfg: RunConfig) -> list[str]:
    """What the machine must offer for the run: CUDA for fp16 / nccl, wandb when asked for."""
    import importlib.util

    problems = []
    if cfg.logging.wandb and importlib.util.find_spec("wandb") is None:
        problems.append(
            "field `logging.wandb`: true, but wandb is not installed. Fix: `pip install wandb`, or set "
            "logging.wandb: false."
        )
    needs_cuda = [
        (f, v)
        for f, v in (
            ("train.mixed_precision", cfg.train.mixed_precision),
            ("distributed.backend", cfg.distributed.backend),
        )
        if v in ("fp16", "nccl")
    ]
    if needs_cuda:
        import torch

        if not torch.cuda.is_available():
            for field, value in needs_cuda:
                fix = "bf16 or no" if field == "train.mixed_precision" else "auto or gloo"
                problems.append(
                    f"field `{field}`: {value!r} needs a CUDA GPU and none is visible. Fix: use {fix} on this machine."
                )
    return problems


# --------------------------------------------------------------------------------------
def preflight(
    cfg: RunConfig, *, check_files: bool = True, training: bool = False, source: str = "<recipe>"
) -> list[str]:
    """Run every check; raise one :class:`RecipeError` listing all problems, else return warnings.

    ``training`` (the start of ``mrgrpo train``) also requires the data a run cannot start without,
    which ``recipes validate`` only warns about (shipped recipes name data users fetch themselves).
    """
    warnings: list[str] = []
    problems = check_registry(cfg)
    if training:
        problems += check_environment(cfg)
    if check_files:
        problems += check_prompt_files(cfg, warnings)
        problems += check_sft_files(cfg, warnings, training)
        problems += check_output_dir(cfg)
        problems += check_resume(cfg)
        problems += check_local_paths(cfg)
        problems += check_accelerate_config(cfg)
    if problems:
        raise RecipeError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return warnings
