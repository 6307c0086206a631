"""Registry: decorator, lazy entries, dotted paths, entry points, clear errors."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

from mrgrpo import registry as registry_module
from mrgrpo.registry import Registry, RegistryError


def test_decorator_and_build():
    reg = Registry("thing", "mrgrpo.test_things")

    @reg.register("double")
    def make_double(factor=2):
        """Doubles."""
        return lambda x: x * factor

    assert reg.build("double", factor=3)(2) == 6
    assert reg.describe()["double"] == "Doubles."
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("double", make_double)


def test_lazy_registration_imports_on_first_use(tmp_path, monkeypatch):
    mod = tmp_path / "lazy_mod_for_test.py"
    mod.write_text("IMPORTED = True\ndef factory(**kw):\n    return kw\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", "mrgrpo.test_things")
    reg.register_lazy("lazy", "lazy_mod_for_test:factory")
    assert "lazy_mod_for_test" not in sys.modules
    assert reg.names() == ["lazy"]
    assert "lazy_mod_for_test" not in sys.modules
    assert reg.build("lazy", a=1) == {"a": 1}
    assert "lazy_mod_for_test" in sys.modules


def test_dotted_path():
    reg = Registry("thing", "mrgrpo.test_things")
    assert reg.get("collections:OrderedDict").__name__ == "OrderedDict"
    with pytest.raises(RegistryError, match="cannot import module"):
        reg.get("no_such_module_xyz:thing")
    with pytest.raises(RegistryError, match="has no attribute"):
        reg.get("collections:NoSuchThing")


def test_unknown_name_lists_known_ones():
    reg = Registry("reward", "mrgrpo.test_things")
    reg.register("ocr", lambda: None)
    reg.register("clip", lambda: None)
    with pytest.raises(RegistryError) as err:
        reg.get("ocrr")
    assert "unknown reward 'ocrr'" in str(err.value) and "clip, ocr" in str(err.value)


def test_entry_point_plugins(monkeypatch):
    ep = metadata.EntryPoint(name="my_reward", value="collections:Counter", group="mrgrpo.rewards")

    def fake_entry_points(group=None):
        return [ep] if group == "mrgrpo.rewards" else []

    monkeypatch.setattr(registry_module.metadata, "entry_points", fake_entry_points)
    reg = Registry("reward", "mrgrpo.rewards")
    assert "my_reward" in reg.names()
    assert reg.build("my_reward")["x"] == 0
