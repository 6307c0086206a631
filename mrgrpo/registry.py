"""Name -> factory registries for rewards and policies.

A :class:`Registry` resolves a name in this order:

1. objects registered with :meth:`Registry.register` (decorator) or lazily with
   :meth:`Registry.register_lazy` (``"package.module:attr"`` imported on first use);
2. a dotted path ``"package.module:factory"`` given directly as the name;
3. third-party plug-ins advertised through the entry-point group (``mrgrpo.rewards`` or
   ``mrgrpo.policies``) of any installed distribution.

Built-in rewards and policies register themselves in ``mrgrpo/rewards/__init__.py`` and
``mrgrpo/policies/__init__.py`` (lazily, so listing names imports no model code).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from mrgrpo.errors import MrgrpoError


class RegistryError(MrgrpoError, KeyError):
    """Unknown name, bad dotted path, or a factory that failed to import."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


@dataclass
class _Entry:
    target: Any  # the factory, or a "module:attr" string not yet imported
    help: str = ""

    def resolve(self) -> Any:
        if isinstance(self.target, str):
            self.target = import_object(self.target)
        return self.target


def import_object(path: str) -> Any:
    """Import ``"package.module:attr"`` (or ``"package.module.attr"``) and return the attribute."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise RegistryError(f"{path!r} is not a dotted path; write it as 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise RegistryError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from exc
    return obj


class Registry:
    """A named collection of factories (classes or functions) of one kind.

    Args:
        kind: what it holds, used in messages (``"reward"``, ``"policy"``).
        entry_point_group: the ``importlib.metadata`` entry-point group scanned for plug-ins.
        builtin_module: a module imported on first lookup so built-ins register themselves.
    """

    def __init__(self, kind: str, entry_point_group: str, builtin_module: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_module = builtin_module
        self._entries: dict[str, _Entry] = {}
        self._loaded_builtins = False
        self._loaded_entry_points = False

    # -- registration -------------------------------------------------------------------
    def register(self, name: str | None = None, obj: Any = None, *, help: str = "", override: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` it returns a decorator.

        ``name`` defaults to the object's ``__name__``. Registering a taken name raises unless
        ``override=True``.
        """

        def _add(target: Any) -> Any:
            key = name or getattr(target, "__name__", None)
            if not key:
                raise RegistryError(f"cannot register {target!r} as a {self.kind}: give it a name")
            self._add(key, _Entry(target, help or _first_doc_line(target)), override)
            return target

        if obj is not None:
            return _add(obj)
        if callable(name) and not isinstance(name, str):  # used as @REG.register without ()
            target, name = name, None
            return _add(target)
        return _add

    def register_builtins(self, table: dict[str, tuple[str, str]]) -> None:
        """Lazily register ``{name: ("package.module:attr", help)}``, keeping names already registered
        (a user's own registration made before the built-ins were imported wins)."""
        for name, (path, help_text) in table.items():
            if name not in self._entries:
                self.register_lazy(name, path, help=help_text)

    def register_lazy(self, name: str, path: str, *, help: str = "", override: bool = False) -> None:
        """Register ``"package.module:attr"`` under ``name`` without importing it yet."""
        self._add(name, _Entry(path, help), override)

    def _add(self, name: str, entry: _Entry, override: bool) -> None:
        if name in self._entries and not override:
            raise RegistryError(f"{self.kind} {name!r} is already registered; pass override=True to replace it")
        self._entries[name] = entry

    # -- lookup -------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._loaded_builtins and self.builtin_module:
            self._loaded_builtins = True
            importlib.import_module(self.builtin_module)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                # "module:attr", without the optional " [extras]" suffix of an entry-point value
                target = f"{ep.module}:{ep.attr}" if ep.attr else ep.module
                self._entries[ep.name] = _Entry(target, f"plug-in from {target}")

    def names(self) -> list[str]:
        """All registered names (built-ins, decorated, and entry-point plug-ins), sorted."""
        self._load_builtins()
        self._load_entry_points()
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """``{name: one-line help}`` for every registered name."""
        names = self.names()
        return {n: self._entries[n].help for n in names}

    def __contains__(self, name: str) -> bool:
        return name in self.names() or ":" in name

    def get(self, name: str) -> Any:
        """The factory for ``name`` (a registered name or a ``"package.module:factory"`` path)."""
        self._load_builtins()
        if name not in self._entries:
            self._load_entry_points()
        if name in self._entries:
            try:
                return self._entries[name].resolve()
            except RegistryError as exc:
                raise RegistryError(f"{self.kind} {name!r} is registered but failed to load: {exc}") from exc
        if ":" in name:
            return import_object(name)
        known = ", ".join(self.names()) or "(none)"
        plural = self.kind[:-1] + "ies" if self.kind.endswith("y") else self.kind + "s"
        raise RegistryError(
            f"unknown {self.kind} {name!r}. Known {plural}: {known}. "
            f"Or give a dotted path 'package.module:factory', or install a plug-in that declares "
            f"the entry point group '{self.entry_point_group}'."
        )

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the factory for ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)


def _first_doc_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


REWARDS = Registry("reward", "mrgrpo.rewards", builtin_module="mrgrpo.rewards")
POLICIES = Registry("policy", "mrgrpo.policies", builtin_module="mrgrpo.policies")
