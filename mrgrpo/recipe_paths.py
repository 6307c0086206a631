"""Paths in recipes: ``~``, ``${VAR}`` and ``${VAR:-default}`` expanded, relative paths taken against the
recipe's folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

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
