"""RewardMixture (mrgrpo.reward_mixture), group_chunks and the one weight-matrix builder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mrgrpo.advantages import compute_advantages, mixture_weights
from mrgrpo.config import RecipeError
from mrgrpo.reward_mixture import RewardFailure, RewardMixture
from mrgrpo.rewards.base import Reward, RewardOutput, group_chunks


def test_group_chunks_keeps_groups_whole_and_packs_greedily():
    ids = ["a", "a", "a", "b", "b", "c", "c", "c", "c", "d"]
    chunks = group_chunks(ids, 5)
    assert chunks == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    # a group bigger than the limit is a chunk of its own; no group is ever split
    assert group_chunks(ids, 2) == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]
    # non-contiguous members of a group travel together, in their original order
    assert group_chunks([0, 1, 0, 1], 2) == [[0, 2], [1, 3]]
    assert group_chunks(None, 4, 10) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert group_chunks([], 4) == [] and group_chunks(None, 4, 0) == []
    for size in range(1, 12):
        chunks = group_chunks(ids, size)
        assert sorted(i for c in chunks for i in c) == list(range(len(ids)))
        for c in chunks:
            groups = {ids[i] for i in c}
            assert all(sum(ids[i] == g for i in c) == ids.count(g) for g in groups)
            assert len(c) <= size or len(groups) == 1


def test_mixture_weights_columns_follow_the_given_names():
    mixes = [{"ocr": 0.7, "clip": 0.3}, {"clip": 1.0}]
    w = mixture_weights(mixes, ["ocr", "judge", "clip"])
    assert w.dtype == torch.float32 and w.tolist() == [[pytest.approx(0.7), 0.0, pytest.approx(0.3)], [0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match=r"weighs rewards \['ocr'\] that are not scored"):
        mixture_weights(mixes, ["clip"])
    # compute_advantages' contract: a Tensor of weights has its columns in sorted(rewards) order
    rewards = {"ocr": torch.tensor([0.0, 1.0, 0.0, 1.0]), "clip": torch.tensor([1.0, 0.0, 0.0, 1.0])}
    g = torch.tensor([0, 0, 1, 1])
    by_dict = compute_advantages(rewards, {"ocr": 0.7, "clip": 0.3}, g)
    by_tensor = compute_advantages(rewards, mixture_weights([{"ocr": 0.7, "clip": 0.3}] * 4, sorted(rewards)), g)
    torch.testing.assert_close(by_dict, by_tensor)


class _Recorder(Reward):
    """Scores 1..n within each call; records the group ids of every call and counts close()."""

    def __init__(self, name, *, needs_groups=False, is_remote=False, fail=False):
        self.name, self.needs_groups, self.is_remote, self.fail = name, needs_groups, is_remote, fail
        self.calls: list[list[int]] = []
        self.closed = 0

    def score(self, images, prompts, metadata):
        if self.fail:
            raise ConnectionError("server gone")
        self.calls.append([m["group_id"] for m in metadata])
        return RewardOutput(torch.arange(len(images), dtype=torch.float32) + 1)

    def close(self):
        self.closed += 1


def test_mixture_scores_only_weighted_rewards_in_whole_groups():
    judge = _Recorder("judge", needs_groups=True, is_remote=True)
    plain = _Recorder("plain")
    mix = RewardMixture({"plain": plain, "judge": judge}, ["plain", "judge"], batch_sizes={"judge": 5, "plain": 3})
    assert mix.names == ["judge", "plain"]  # sorted: the column order of the weights
    G = 3
    records = [SimpleNamespace(prompt=f"p{i}", source="ab"[i % 2], fields={}) for i in range(4)]
    mixtures = {"a": {"plain": 1.0, "judge": 0.5}, "b": {"plain": 1.0}}
    out = mix.score([object()] * 12, records, torch.arange(4).repeat_interleave(G), mixtures, G)
    assert out.names == ["judge", "plain"] and out.weights.shape == (12, 2)
    assert out.weights[:, 0].tolist() == [0.5] * 3 + [0.0] * 3 + [0.5] * 3 + [0.0] * 3
    # the judge saw only the groups of source a, each whole (a batch of 5 holds one group of 3)
    assert judge.calls == [[0, 0, 0], [2, 2, 2]]
    assert out.valid["judge"].tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    assert out.scores["judge"].tolist() == [1, 2, 3, 0, 0, 0, 1, 2, 3, 0, 0, 0]
    # the plain reward was called in plain chunks of 3 over all 12 images
    assert [len(c) for c in plain.calls] == [3, 3, 3, 3] and out.valid["plain"].all()
    assert out.failures == {"judge": 0, "plain": 0}
    mix.close()


def test_mixture_failure_masks_or_stops_and_close_closes_every_reward_once():
    bad, good = _Recorder("bad", fail=True), _Recorder("good")
    records = [SimpleNamespace(prompt="p", source="a", fields={"i": 0})]
    mixtures = {"a": {"bad": 0.5, "good": 0.5}}
    mix = RewardMixture({"bad": bad, "good": good}, ["bad", "good"])
    out = mix.score([object()] * 2, records, torch.zeros(2, dtype=torch.long), mixtures, 2)
    assert out.failures["bad"] == 2 and not out.valid["bad"].any() and out.valid["good"].all()
    mix.close()
    mix.close()
    assert bad.closed == 1 and good.closed == 1
    stop = RewardMixture({"bad": bad, "good": good}, ["bad", "good"], failure="stop")
    with pytest.raises(RewardFailure, match="reward 'bad' failed: server gone"):
        stop.score([object()] * 2, records, torch.zeros(2, dtype=torch.long), mixtures, 2)
    with pytest.raises(RecipeError, match=r"rewards \['missing'\] are used by the mixtures but were not built"):
        RewardMixture({"good": good}, ["good", "missing"])
