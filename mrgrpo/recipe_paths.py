"""Paths in recipes: ``~``, ``${VAR}`` and ``${VAR:-default}`` expanded, relative paths taken against the
recipe's folder."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mrgrpo.errors import RecipeError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, field: str = "a path") -> str:
    """``text`` with ``${VAR}`` / ``${VAR:-default}`` replaced from the environment and a leading ``~`` expanded.

    Raises :class:`RecipeError` for ``${VAR}`` of a variable that is not set (no silent empty string).
    """

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                raise RecipeError(
                    f"field `{field}`: {text!r} uses the environment variable {m.group(1)} "
                    "which is not set. "
                    f"Fix: export {m.group(1)}=..., or write ${{{m.group(1)}:-default}}."
                )
            return m.group(2)
        return value

    return os.path.expanduser(_ENV.sub(sub, text))


def resolve_path(path: str, base: Path | None, field: str = "a path") -> Path:
    """Expand ``~``, ``${VAR}`` and ``${VAR:-default}``; relative paths are taken against ``base``."""
    p = Path(expand_vars(path, field))
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


# Recipe fields that hold a file path taken against the recipe's folder (output_dir and
# train.resume are taken against the working directory and are not listed).
LIST_PATH_FIELDS = (
    ("data", "sources", ("path",)),
    ("data", "sft_sources", ("path", "image_root")),
    ("eval", "sources", ("path",)),
)
SCALAR_PATH_FIELDS = (("policy", "checkpoint"), ("distributed", "accelerate_config"))
# may name a hub id instead of a local path: made absolute only when the local path exists
MAYBE_HUB_ID_FIELDS = frozenset({"policy.checkpoint"})


def path_fields(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
    """``(mapping, key, field name)`` of every recipe-relative path set in a recipe dict.

    Works on raw YAML (before validation) and on ``RunConfig.model_dump()`` alike; parts that are not
    mappings or lists (a malformed recipe) are skipped, for validation to report.
    """
    for section, key, names in LIST_PATH_FIELDS:
        node = data.get(section)
        items = node.get(key) if isinstance(node, dict) else None
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            for name in names:
                if isinstance(item.get(name), str) and item[name]:
                    yield item, name, f"{section}.{key}.{i}.{name}"
    for section, key in SCALAR_PATH_FIELDS:
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            yield node, key, f"{section}.{key}"
