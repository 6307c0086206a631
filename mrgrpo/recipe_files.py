"""Reading recipe files: careful text reading (clear errors for missing, binary, non-UTF-8 files) and
``extends:``, a recipe built on another one.

``extends: toy_world/rl.yaml`` (relative to the recipe's folder, ``~`` and ``${VAR}`` expanded) loads the
base recipe first (its own ``extends`` too, any depth) and merges this one over it: mappings merge key by
key, everything else (values and lists, e.g. ``data.sources``) replaces the base's. The base's relative
paths (prompt files, SFT records, ``policy.checkpoint``, ...) keep naming the files next to the base, not
next to the recipe that extends it. ``output_dir`` and ``train.resume`` stay relative to the working
directory, like in any recipe. The resolved recipe every run writes (``output_dir/config.yaml``) has no
``extends``: it is the merged result.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from mrgrpo.errors import RecipeError
from mrgrpo.recipe_paths import MAYBE_HUB_ID_FIELDS, expand_vars, path_fields, resolve_path

EXTENDS = "extends"

_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip file",
    b"%PDF": "a PDF",
    b"RIFF": "a RIFF (WebP/WAV) file",
}


def read_text_file(
    path: str | os.PathLike, what: str, fix: str, *, error: type[Exception] | None = None, max_bytes: int | None = None
) -> str:
    """The UTF-8 text of ``path``, or ``error`` (default :class:`RecipeError`) naming the file and the fix.

    Catches what a careless path gives: a missing file, a folder, no read permission, a binary file
    (an image given as a recipe), text in another encoding, a file larger than ``max_bytes``.
    """
    err = error or RecipeError
    p = Path(path)
    if not p.exists():
        raise err(f"{what} {str(p)!r} does not exist. Fix: {fix}.")
    if p.is_dir():
        raise err(f"{what} {str(p)!r} is a folder, not a file. Fix: {fix}.")
    if max_bytes is not None and p.stat().st_size > max_bytes:
        raise err(
            f"{what} {str(p)!r} is {p.stat().st_size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
            f"such a file can be. Fix: {fix}."
        )
    try:
        raw = p.read_bytes()
    except PermissionError:
        raise err(
            f"{what} {str(p)!r} cannot be read: permission denied. Fix: `chmod u+r {p}` or copy it somewhere readable."
        ) from None
    except OSError as exc:
        raise err(f"{what} {str(p)!r} cannot be read: {exc.strerror or exc}. Fix: {fix}.") from None
    kind = next((name for magic, name in _MAGIC.items() if raw.startswith(magic)), None)
    if kind is None and b"\x00" in raw[:4096] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        kind = "a binary file"
    if kind is not None:
        raise err(f"{what} {str(p)!r} is {kind}, not text. Fix: {fix}.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise err(
            f"{what} {str(p)!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}). "
            f"Fix: save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None
    return text.removeprefix("\ufeff")


def read_recipe_yaml(path: Path, source: str | None = None) -> dict[str, Any]:
    """The mapping of the YAML recipe at ``path``; :class:`RecipeError` for an unreadable file, bad YAML
    or a top level that is not a mapping."""
    source = source or str(path)
    text = read_text_file(
        path, "recipe file", "pass a YAML recipe; `mrgrpo recipes list` shows the shipped ones", error=RecipeError
    )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML: {exc}. Fix: correct the YAML syntax.") from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: the top level must be a mapping of sections (policy, rewards, data, rl, train, ...)."
        )
    return data


def merge_recipes(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base`` (new dict): mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_recipes(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def rebase_paths(data: dict[str, Any], folder: Path, source: str) -> None:
    """Make the relative path fields of ``data`` (a recipe read from ``folder``) absolute, in place.

    ``${VAR}`` is expanded first; absolute values are left as written. A ``policy.checkpoint`` that is
    not a local path under ``folder`` is left as written (a hub id).
    """
    for node, key, field in path_fields(data):
        try:
            expanded = Path(expand_vars(node[key], field))
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None
        if expanded.is_absolute():
            continue
        target = folder / expanded
        if field in MAYBE_HUB_ID_FIELDS and not target.exists():
            continue
        node[key] = os.path.normpath(os.path.abspath(target))


def apply_extends(
    data: dict[str, Any],
    folder: Path,
    source: str,
    chain: tuple[Path, ...] = (),
    files: list[Path] | None = None,
) -> dict[str, Any]:
    """``data`` merged over the recipe its ``extends`` names (recursively); ``data`` itself if it has none.

    Args:
        data: a recipe mapping (not modified).
        folder: what a relative ``extends`` is taken against (the recipe's folder, or the CWD for a dict).
        source: the recipe's name for error messages.
        chain: the files already being loaded (a cycle is an error).
        files: when given, each base file read is appended to it, nearest first.
    """
    if EXTENDS not in data:
        return data
    ref = data[EXTENDS]
    rest = {k: v for k, v in data.items() if k != EXTENDS}
    fix = "name the base recipe's YAML file, e.g. `extends: toy_world/rl.yaml` (relative to this recipe's folder)"
    if not isinstance(ref, str) or not ref.strip():
        raise RecipeError(f"{source}: field `extends`: {ref!r} is not a file path. Fix: {fix}.")
    try:
        base_path = resolve_path(ref, folder, "extends")
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    key = base_path.resolve()
    if key in chain:
        loop = " -> ".join(str(p) for p in (*chain, key))
        raise RecipeError(
            f"{source}: field `extends`: {ref!r} makes a cycle ({loop}). Fix: let one of these recipes stop extending."
        )
    try:
        base = read_recipe_yaml(base_path)
    except RecipeError as exc:
        raise RecipeError(f"{source}: field `extends`: {exc}") from None
    if files is not None:
        files.append(base_path)
    # a new dict either way (freshly read, or merged): rebasing it in place touches nothing of the caller's
    base = apply_extends(base, base_path.parent, str(base_path), (*chain, key), files)
    rebase_paths(base, base_path.parent, str(base_path))
    return merge_recipes(base, rest)


def extends_chain(path: Path) -> list[Path]:
    """``path`` and the files its ``extends`` names, nearest first (what a cache key of the recipe must read).

    Raises :class:`RecipeError` like :func:`apply_extends` for a bad ``extends`` or a cycle.
    """
    chain = [Path(path)]
    apply_extends(read_recipe_yaml(chain[0]), chain[0].parent, str(chain[0]), (chain[0].resolve(),), chain)
    return chain
