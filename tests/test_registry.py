"""Registry (mrgrpo.registry): decorator, lazy entries, dotted paths, entry points, clear errors."""

from __future__ import annotations

import sys
import uuid
from importlib import metadata

import pytest

from mrgrpo import registry as registry_module
from mrgrpo.registry import REWARDS, Registry, RegistryError


@pytest.fixture
def no_plugins(monkeypatch):
    """No installed distribution advertises anything (the test machine's may)."""
    monkeypatch.setattr(registry_module.metadata, "entry_points", lambda group=None: [])


def fresh(kind="reward", group="mrgrpo.test_things"):
    return Registry(kind, group)


def test_decorator_registration_and_build_with_kwargs(no_plugins):
    reg = fresh("thing")

    @reg.register("double")
    def make_double(factor=2):
        """Multiplies by a factor."""
        return lambda x: x * factor

    @reg.register
    class Plain:
        def __init__(self, a=1, b=2):
            self.a, self.b = a, b

    @reg.register()
    def named_by_function():
        return "ok"

    assert reg.names() == ["Plain", "double", "named_by_function"]
    assert reg.build("double", factor=3)(5) == 15
    assert reg.build("double")(5) == 10
    obj = reg.build("Plain", b=7)
    assert isinstance(obj, Plain) and (obj.a, obj.b) == (1, 7)
    assert reg.build("named_by_function") == "ok"
    assert reg.get("double") is make_double  # the decorator returns the function unchanged
    assert reg.describe()["double"] == "Multiplies by a factor."
    reg.register("triple", lambda: 3)
    assert reg.build("triple") == 3 and "triple" in reg


def test_duplicate_registration_is_an_error(no_plugins):
    reg = fresh()
    reg.register("ocr", lambda: 1)
    with pytest.raises(RegistryError, match="'ocr' is already registered"):
        reg.register("ocr", lambda: 2)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register_lazy("ocr", "collections:Counter")
    assert reg.build("ocr") == 1  # the first one is kept
    reg.register("ocr", lambda: 2, override=True)
    assert reg.build("ocr") == 2


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    name = f"lazy_mod_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("IMPORTED = True\ndef factory(**kw):\n    return ('built', kw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_register_lazy_imports_only_when_used(lazy_module, no_plugins):
    reg = fresh()
    reg.register_lazy("lazy", f"{lazy_module}:factory", help="a lazy one")
    assert lazy_module not in sys.modules
    assert reg.names() == ["lazy"] and "lazy" in reg
    assert reg.describe() == {"lazy": "a lazy one"}
    assert lazy_module not in sys.modules  # listing, describing, `in`: no import
    assert reg.build("lazy", a=1) == ("built", {"a": 1})
    assert lazy_module in sys.modules
    assert reg.get("lazy") is sys.modules[lazy_module].factory


def test_lazy_entry_that_fails_to_import(no_plugins):
    reg = fresh()
    reg.register_lazy("broken", "no_such_module_for_mrgrpo_tests:factory")
    assert reg.names() == ["broken"]
    with pytest.raises(
        RegistryError, match="'broken' is registered but failed to load.*no_such_module_for_mrgrpo_tests"
    ):
        reg.get("broken")


def test_dotted_path(lazy_module, no_plugins):
    reg = fresh()
    assert reg.build(f"{lazy_module}:factory", k="v") == ("built", {"k": "v"})
    assert reg.get("collections:OrderedDict").__name__ == "OrderedDict"
    assert reg.get("os.path:join")("a", "b") in ("a/b", "a\\b")  # package.module:factory
    assert f"{lazy_module}:factory" in reg
    with pytest.raises(RegistryError, match="cannot import module 'no_such_module_xyz'"):
        reg.get("no_such_module_xyz:thing")
    with pytest.raises(RegistryError, match="has no attribute 'NoSuchThing'"):
        reg.get("collections:NoSuchThing")


def test_unknown_name_lists_the_known_names(no_plugins):
    reg = fresh("reward")
    reg.register("ocr", lambda: None)
    reg.register("clip", lambda: None)
    reg.register_lazy("unifiedreward_think", "collections:Counter")
    with pytest.raises(RegistryError) as err:
        reg.build("ocrr")
    msg = str(err.value)
    assert "unknown reward 'ocrr'" in msg
    assert "Known rewards: clip, ocr, unifiedreward_think" in msg
    assert "package.module:factory" in msg and "mrgrpo.test_things" in msg
    assert isinstance(err.value, KeyError)


def test_builtin_rewards_registry_reports_its_names():
    with pytest.raises(RegistryError) as err:
        REWARDS.get("definitely_not_a_reward")
    msg = str(err.value)
    assert "unknown reward 'definitely_not_a_reward'" in msg
    for name in REWARDS.names():
        assert name in msg


def _fake_entry_points(monkeypatch, *eps):
    calls = []

    def entry_points(group=None):
        calls.append(group)
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
    return calls


def test_entry_point_plugins_are_discovered(monkeypatch, lazy_module):
    ep = metadata.EntryPoint(name="my_reward", value=f"{lazy_module}:factory", group="mrgrpo.rewards")
    other = metadata.EntryPoint(name="my_policy", value="collections:Counter", group="mrgrpo.policies")
    calls = _fake_entry_points(monkeypatch, ep, other)
    reg = Registry("reward", "mrgrpo.rewards")
    reg.register("ocr", lambda: "ocr")
    assert reg.names() == ["my_reward", "ocr"]  # the policies group is not mixed in
    assert calls == ["mrgrpo.rewards"]
    assert lazy_module not in sys.modules  # discovered, not imported
    assert reg.build("my_reward", w=2) == ("built", {"w": 2})
    assert lazy_module in sys.modules
    with pytest.raises(RegistryError, match="Known rewards: my_reward, ocr"):
        reg.get("nope")


def test_entry_point_found_by_get_without_listing_first(monkeypatch):
    _fake_entry_points(
        monkeypatch, metadata.EntryPoint(name="counter", value="collections:Counter", group="mrgrpo.rewards")
    )
    reg = Registry("reward", "mrgrpo.rewards")
    assert reg.build("counter")["x"] == 0


def test_entry_point_with_extras(monkeypatch):
    # "module:attr [extra]" is a valid entry-point value; the extras are not part of the attribute
    _fake_entry_points(
        monkeypatch, metadata.EntryPoint(name="counter", value="collections:Counter [gpu]", group="mrgrpo.rewards")
    )
    reg = Registry("reward", "mrgrpo.rewards")
    assert reg.build("counter")["x"] == 0


def test_registered_names_win_over_entry_points(monkeypatch):
    _fake_entry_points(
        monkeypatch, metadata.EntryPoint(name="ocr", value="collections:Counter", group="mrgrpo.rewards")
    )
    reg = Registry("reward", "mrgrpo.rewards")
    reg.register("ocr", lambda: "mine")
    assert reg.build("ocr") == "mine"
