"""Typed recipes: one pydantic schema for a whole run, YAML loading, ``--set a.b=c`` overrides.

Every field has a default matching the DeepGen paper's RL stage (``docs/training.md``) and a
one-line description (``mrgrpo recipes schema`` prints them as a table). Loading checks, before
any model is built: unknown keys, wrong types, and impossible combinations (a mixture naming an
undefined reward, a batch not divisible by the group size, all-zero weights, missing files).
Every failure is a :class:`RecipeError` naming the field, the bad value and the fix.

Relative paths in a recipe are resolved against the recipe file's folder.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mrgrpo.recipe_checks import check_recipe, sde_trainable_steps  # noqa: F401  (re-exported)
from mrgrpo.recipe_files import EXTENDS, apply_extends, read_recipe_yaml, read_text_file  # noqa: F401  (re-exported)
from mrgrpo.recipe_paths import MAYBE_HUB_ID_FIELDS, path_fields
from mrgrpo.recipe_schema import (  # noqa: F401  (re-exported: the schema is part of this module's API)
    DataConfig,
    DistributedConfig,
    EMAConfig,
    EvalConfig,
    LoggingConfig,
    LoRAConfig,
    PolicyConfig,
    PromptSource,
    RecipeError,
    RewardSpec,
    RLConfig,
    RunConfig,
    SFTConfig,
    SFTSource,
    Stage,
    TrainConfig,
    expand_vars,
    resolve_path,
)

# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (``["a", "b", "c"]``, value parsed as YAML: numbers, bools, lists, null)."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected key=value, e.g. --set rl.group_size=4")
    key, _, raw = text.partition("=")
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise RecipeError(f"--set {text!r}: empty key; write e.g. --set train.lr=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 as a string
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b=c`` entries into the nested recipe dict (list items by index: ``data.sources.0.weight=2``)."""
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = _list_item(node, k, keys[: i + 1], text)
                continue
            if not isinstance(node, dict):
                raise RecipeError(
                    f"--set {text!r}: {'.'.join(keys[:i])} is a value, not a section. "
                    f"Fix: set {'.'.join(keys[:i])}=... directly"
                )
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
        last = keys[-1]
        if isinstance(node, list):
            idx = _index(last, keys, text, len(node))
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"--set {text!r}: {'.'.join(keys[:-1])} is a value, not a section")
    return data


def _index(k: str, keys: list[str], text: str, n: int) -> int:
    if not k.isdigit() or int(k) >= n:
        raise RecipeError(f"--set {text!r}: {'.'.join(keys)} needs a list index below {n}")
    return int(k)


def _list_item(node: list, k: str, keys: list[str], text: str) -> Any:
    return node[_index(k, keys, text, len(node))]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: the recipe does not match the schema ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            parent = ".".join(str(x) for x in e["loc"][:-1])
            fix = (
                f"remove it or fix its spelling; run `mrgrpo recipes schema` for the fields of {parent or 'the recipe'}"
            )
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  - field `{loc}`: unknown key (value {shown}). Fix: {fix}.")
        elif e["type"] == "missing":
            lines.append(f"  - field `{loc}`: required but missing. Fix: add it (see `mrgrpo recipes schema`).")
        else:
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  - field `{loc}`: got {shown}: {e['msg']}. Fix: give a value of the right type/range.")
    return "\n".join(lines)


def load_recipe(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    *,
    data: dict[str, Any] | None = None,
    check_files: bool = True,
) -> RunConfig:
    """Load, override and validate a recipe; raise :class:`RecipeError` on any problem.

    Args:
        path: the YAML file (or None with ``data``).
        overrides: ``["a.b=c", ...]`` applied before validation (typed by the schema).
        data: a recipe as a dict instead of a file (relative paths then resolve against CWD).
        check_files: also check that required data files exist.
    """
    source = str(path) if path is not None else "<recipe>"
    recipe_path: Path | None = None
    if path is not None:
        recipe_path = Path(path)
        data = read_recipe_yaml(recipe_path, source)
    if not isinstance(data or {}, dict):
        raise RecipeError(
            f"{source}: the top level must be a mapping of sections (policy, rewards, data, rl, train, ...)."
        )
    data = copy.deepcopy(dict(data or {}))  # overrides must not write into the caller's dict
    folder, chain = (recipe_path.parent, (recipe_path.resolve(),)) if recipe_path else (Path.cwd(), ())
    data = apply_extends(data, folder, source, chain)
    apply_overrides(data, list(overrides or []))
    if EXTENDS in data:
        raise RecipeError(
            f"{source}: `extends` was given as an override; it can only be a key of a recipe file. "
            "Fix: write `extends: base.yaml` at the top of the recipe."
        )
    check_moved_fields(data, source)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err, source)) from None
    cfg._recipe_path = recipe_path.resolve() if recipe_path else None
    try:  # output_dir and resume are taken as given (CWD-relative), but ${VAR} and ~ expand as in every path
        cfg.output_dir = expand_vars(cfg.output_dir, "output_dir")
        if cfg.train.resume not in (None, "auto"):
            cfg.train.resume = expand_vars(cfg.train.resume, "train.resume")
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    check_recipe(cfg, check_files=check_files, source=source)
    return cfg


# fields that moved to another section: old location -> new location
MOVED_FIELDS = {
    ("data", "eval_sources"): "eval.sources",
    ("rl", "eval_cfg_scale"): "eval.cfg_scale",
    ("rl", "eval_num_steps"): "eval.num_steps",
    ("logging", "eval_every"): "eval.every",
    ("logging", "eval_prompts"): "eval.prompts",
}


def check_moved_fields(data: dict[str, Any], source: str = "<recipe>") -> None:
    """Raise a :class:`RecipeError` naming the new place of every field that moved (e.g. ``rl.eval_cfg_scale``)."""
    problems = []
    for (section, key), new in MOVED_FIELDS.items():
        node = data.get(section)
        if isinstance(node, dict) and key in node:
            problems.append(
                f"  - field `{section}.{key}`: moved to `{new}`. Fix: write it as `{new}: {node[key]!r}` "
                f"(section `{new.split('.')[0]}:`)."
            )
    if problems:
        raise RecipeError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(problems))


def dump_config(cfg: RunConfig) -> str:
    """The resolved recipe as YAML (every field, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _with_absolute_paths(cfg: RunConfig) -> dict[str, Any]:
    """``cfg.model_dump(mode="json")`` with every recipe-relative file path made absolute.

    Relative paths are taken against the recipe's folder (or the CWD for a recipe given as a
    dict); written as they are into ``output_dir/config.yaml`` they would be taken against the
    run folder when that file is loaded again, and point at files that are not there.
    """
    data = cfg.model_dump(mode="json")
    for node, key, field in path_fields(data):
        if resolve_path(node[key], None).is_absolute():
            continue
        p = cfg.resolve_path(node[key]).absolute()
        if field in MAYBE_HUB_ID_FIELDS and not p.exists():
            continue  # e.g. a hub id for policy.checkpoint
        node[key] = str(p)
    return data


def save_resolved_config(cfg: RunConfig, output_dir: str | os.PathLike) -> Path:
    """Write the resolved recipe to ``output_dir/config.yaml`` atomically and return its path.

    File paths that the recipe gives relative to its folder are written absolute, so that the
    file loads back (``load_recipe(output_dir/config.yaml)``) and names the same files.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "config.yaml"
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(_with_absolute_paths(cfg), sort_keys=False))
    os.replace(tmp, target)
    return target


def schema_rows(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(field, type, default, description)`` of every leaf field, for the README table."""
    rows: list[tuple[str, str, str, str]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = info.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None:
            rows.extend(schema_rows(sub, key + "."))
            continue
        item_model = _list_model(ann)
        type_name = _type_name(ann)
        is_map = str(ann).startswith("dict")
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            made = info.get_default(call_default_factory=True)
            default = repr(made) if item_model is None else ("{}" if is_map else "[]")
        else:
            default = repr(info.default)
        rows.append((key, type_name, default, info.description or ""))
        if item_model is not None:
            optional = type(None) in (getattr(ann, "__args__", ()) or ())  # `Model | None`: a sub-section
            rows.extend(schema_rows(item_model, key + (".<name>." if is_map else "." if optional else "[].")))
    return rows


def _list_model(ann: Any) -> type[BaseModel] | None:
    args = getattr(ann, "__args__", ()) or ()
    for a in args:
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _type_name(ann: Any) -> str:
    text = str(ann).replace("typing.", "")
    text = re.sub(r"<class '([^']+)'>", r"\1", text)
    return text.replace("mrgrpo.recipe_schema.", "").replace("mrgrpo.sde_window.", "")


def schema_markdown() -> str:
    """The recipe schema as a Markdown table."""
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for key, typ, default, desc in schema_rows():
        lines.append(f"| `{key}` | `{typ}` | `{default}` | {desc} |")
    return "\n".join(lines)
