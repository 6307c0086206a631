"""The scoring worker and the pixel budget in-process: chunking, fairness, re-scoring a failed merge."""

from __future__ import annotations

import asyncio
import threading

import pytest
from PIL import Image

from mrgrpo.reward_servers.app import PixelBudget
from mrgrpo.reward_servers.batching import BatchingScorer, group_chunks
from mrgrpo.rewards.base import Reward, RewardOutput


def test_chunks_respect_images_and_pixels():
    meta = [{}] * 6
    assert group_chunks(meta, 4, False) == [(0, 4), (4, 6)]
    assert group_chunks(meta, 4, False, [100, 100, 500, 10, 10, 10], 250) == [(0, 2), (2, 3), (3, 6)]
    assert group_chunks(meta, 2, False, [1] * 6, 250) == [(0, 2), (2, 4), (4, 6)]
    groups = [{"group_id": g} for g in (0, 0, 1, 1, 2, 2)]
    assert group_chunks(groups, 4, True) == [(0, 4), (4, 6)]  # whole groups, pixels ignored


class Recorder(Reward):
    """Scores the red value / 255; the first call blocks until released; records each call's sizes."""

    def __init__(self):
        self.calls, self.release, self.started = [], threading.Event(), threading.Event()

    def score(self, images, prompts, metadata):
        if not self.calls:
            self.started.set()
            self.release.wait(10)
        self.calls.append([im.size[0] for im in images])
        if "boom" in prompts:
            raise ValueError("bad input")
        return RewardOutput([im.getpixel((0, 0))[0] / 255 for im in images])


def test_small_requests_go_before_big_ones_and_a_failed_merge_is_rescored():
    reward = Recorder()
    scorer = BatchingScorer(reward, max_batch=8, merge_pixels=64 * 64)
    try:
        first = scorer.submit([Image.new("RGB", (4, 4), (10, 0, 0))], ["p"], [{}])
        assert reward.started.wait(10)  # the worker is busy: the next ones queue
        big = scorer.submit([Image.new("RGB", (128, 128), (20, 0, 0))] * 2, ["p"] * 2, [{}, {}])
        small = [
            scorer.submit([Image.new("RGB", (4, 4), (v, 0, 0))], [p], [{}])
            for v, p in ((30, "a"), (40, "boom"), (50, "b"))
        ]
        reward.release.set()
        assert first.result(10)["scores"] == pytest.approx([10 / 255])
        assert big.result(10)["scores"] == pytest.approx([20 / 255] * 2)
        assert small[0].result(10)["scores"] == pytest.approx([30 / 255])
        assert small[2].result(10)["scores"] == pytest.approx([50 / 255])
        with pytest.raises(ValueError, match="bad input"):
            small[1].result(10)
        # the three small requests were merged (and failed together), then re-scored one by one; the big
        # request was cut into one chunk per image and went after them
        assert reward.calls == [[4], [4, 4, 4], [4], [4], [4], [128], [128]]
        assert scorer.stats()["rescored_batches"] == 1
    finally:
        scorer.close()


def test_pixel_budget_keeps_room_for_small_requests():
    async def main():
        budget = PixelBudget(100, reserve=10, small=5)
        await budget.acquire(100)  # a big request fills the shared part
        await asyncio.wait_for(budget.acquire(5), 1)  # a small one still gets in (reserve)
        waiting = asyncio.ensure_future(budget.acquire(50))
        await asyncio.sleep(0.01)
        assert not waiting.done() and len(budget.waiters) == 1
        await asyncio.wait_for(budget.acquire(5), 1)  # first-fit: not held up behind the waiting big one
        budget.release(100)
        await asyncio.wait_for(waiting, 1)
        assert budget.used == 60

    asyncio.run(main())
