"""Reward interface, registry of built-ins, plug-ins (plain function, dotted path, entry point), clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from mrgrpo.registry import REWARDS, Registry, RegistryError
from mrgrpo.rewards.base import Reward, RewardOutput, as_reward, build_reward

BUILTINS = {
    "ocr",
    "clip",
    "unifiedreward_think",
    "unifiedreward-think",
    "unifiedreward_point",
    "brightness",
    "color_match",
    "jpeg_compressibility",
    "remote",
}


def test_listing_builtins_imports_no_torch():
    code = (
        "import sys; from mrgrpo.registry import REWARDS; print(sorted(REWARDS.names())); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert BUILTINS <= set(eval(out[0]))
    assert out[1] == "False"


def test_builtin_flags_and_alias():
    assert REWARDS.get("unifiedreward-think") is REWARDS.get("unifiedreward_think")
    for name in ("remote", "unifiedreward_think", "unifiedreward_point"):
        assert REWARDS.get(name).is_remote, name
    for name in ("ocr", "clip", "brightness", "color_match", "jpeg_compressibility"):
        assert not REWARDS.get(name).is_remote, name
    assert REWARDS.get("unifiedreward_think").needs_groups and not REWARDS.get("ocr").needs_groups
    assert all(REWARDS.describe()[n] for n in BUILTINS)  # every built-in has a help line


def test_plain_function_rewards_are_wrapped():
    def half_broken(images, prompts):
        return [0.3, None, float("nan")]

    r = as_reward(half_broken)
    out = r([Image.new("RGB", (4, 4))] * 3, ["a", "b", "c"])
    assert out.scores.tolist() == pytest.approx([0.3, 0.0, 0.0]) and out.valid.tolist() == [True, False, False]
    assert out.scores.dtype == torch.float32 and out.valid.dtype == torch.bool
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        r([Image.new("RGB", (4, 4))] * 2, ["a"])
    seen = {}

    def with_meta(images, prompts, metadata=None):
        seen["meta"] = metadata
        return [1.0] * len(images)

    as_reward(with_meta)([Image.new("RGB", (4, 4))], ["a"], [{"group_id": 3, "source": "s"}])
    assert seen["meta"] == [{"group_id": 3, "source": "s"}]


def test_reward_output_checks():
    out = RewardOutput([1.0, float("nan"), 2.0], [True, False, True])
    assert out.scores.tolist() == [1.0, 0.0, 2.0]  # invalid positions are 0 by convention, never NaN
    with pytest.raises(ValueError, match="valid has shape"):
        RewardOutput([1.0, 2.0], [True])

    class Short(Reward):
        name = "short"

        def score(self, images, prompts, metadata):
            return RewardOutput([1.0])

    with pytest.raises(ValueError, match="returned 1 scores for 2 images"):
        Short()([Image.new("RGB", (4, 4))] * 2, ["a", "b"])


def test_dotted_path_and_entry_point_plugins(tmp_path, monkeypatch):
    pkg = tmp_path / "my_reward_pkg_x"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from mrgrpo.rewards.base import Reward, RewardOutput

        def redness(images, prompts):
            return [im.convert("RGB").getpixel((0, 0))[0] / 255 for im in images]

        class Const(Reward):
            name = "const"
            def __init__(self, value=0.25):
                self.value = value
            def score(self, images, prompts, metadata):
                return RewardOutput([self.value] * len(images))
    """)
    )
    dist = tmp_path / "my_reward_pkg_x-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-reward-pkg-x\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mrgrpo.rewards]\nmy_const = my_reward_pkg_x:Const\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    # dotted path, plain function
    assert build_reward("my_reward_pkg_x:redness")([red], ["p"]).scores.tolist() == pytest.approx([1.0])
    # dotted path, class with kwargs
    assert build_reward("my_reward_pkg_x:Const", {"value": 0.5})([red], ["p"]).scores.tolist() == [0.5]
    # entry point, found by a registry scanning the same group as REWARDS
    fresh = Registry("reward", "mrgrpo.rewards")
    assert "my_const" in fresh.names()
    assert fresh.build("my_const", value=0.75)([red], ["p"]).scores.tolist() == [0.75]


def test_clear_errors_for_bad_names_and_kwargs():
    with pytest.raises(RegistryError, match="unknown reward 'nope'.*brightness"):
        build_reward("nope")
    with pytest.raises(
        TypeError,
        match=r"reward 'jpeg_compressibility' got unknown argument\(s\) 'qualty'.*accepts: quality, budget_kb",
    ):
        build_reward("jpeg_compressibility", {"qualty": 90})
    with pytest.raises(ValueError, match="quality must be in 1..100"):
        build_reward("jpeg_compressibility", {"quality": 0})
    with pytest.raises(ValueError, match="mode must be 'flowgrpo', 'deepgen' or 'multi'"):
        build_reward("ocr", {"mode": "fancy"})
    with pytest.raises(ValueError, match="urls"):
        build_reward("remote", {"urls": []})
    with pytest.raises(ValueError, match="template must be one of"):
        build_reward("unifiedreward_think", {"template": "long"})
