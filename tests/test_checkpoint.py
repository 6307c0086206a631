"""Atomic checkpoints (mrgrpo.checkpoint): only complete folders count, pruning, resume choice, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mrgrpo import checkpoint as ckpt
from mrgrpo.errors import CheckpointError


def _save(out, step, keep_last=3, payload="x"):
    tmp = ckpt.begin(out, step, is_main=True)
    (tmp / "state.txt").write_text(payload)
    return ckpt.commit(out, step, keep_last)


def test_commit_renames_into_place_and_prunes_to_keep_last(tmp_path):
    for step in (2, 4, 6, 8):
        final = _save(tmp_path, step, keep_last=2, payload=str(step))
        assert final.name == f"step-{step:06d}" and (final / "COMPLETE").read_text() == str(step)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000006", "step-000008"]
    assert (ckpt.final_dir_for(tmp_path, 8) / "state.txt").read_text() == "8"
    assert not list(ckpt.checkpoint_root(tmp_path).glob(".tmp-step-*"))


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    _save(tmp_path, 2)
    # a crash while writing step 4: its temp folder exists, nothing was renamed
    tmp = ckpt.begin(tmp_path, 4, is_main=True)
    (tmp / "state.txt").write_text("partial")
    # and a step-6 folder without the COMPLETE marker (e.g. copied by hand)
    ckpt.final_dir_for(tmp_path, 6).mkdir(parents=True)
    assert ckpt.resolve_resume("auto", tmp_path) == ckpt.final_dir_for(tmp_path, 2)
    with pytest.raises(CheckpointError, match="no COMPLETE marker|not a checkpoint folder"):
        ckpt.resolve_resume(str(ckpt.final_dir_for(tmp_path, 6)), tmp_path)
    # the next commit removes the stale temp folder
    _save(tmp_path, 8)
    assert not tmp.exists()
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path / "empty") is None
    assert ckpt.resolve_resume(str(ckpt.final_dir_for(tmp_path, 8)), tmp_path) == ckpt.final_dir_for(tmp_path, 8)


def test_recommitting_a_step_replaces_it(tmp_path):
    _save(tmp_path, 2, payload="old")
    _save(tmp_path, 2, payload="new")
    assert (ckpt.final_dir_for(tmp_path, 2) / "state.txt").read_text() == "new"
    assert len(ckpt.list_checkpoints(tmp_path)) == 1


def test_rng_state_round_trip_replays_every_generator(tmp_path):
    state = ckpt.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=False))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_write_json_is_atomic_and_readable(tmp_path):
    path = tmp_path / "trainer_state.json"
    ckpt.write_json(path, {"step": 3, "cursors": [1, 2]})
    ckpt.write_json(path, {"step": 4, "cursors": [2, 2]})
    import json

    assert json.loads(path.read_text()) == {"step": 4, "cursors": [2, 2]}
    assert not path.with_suffix(".json.tmp").exists()
