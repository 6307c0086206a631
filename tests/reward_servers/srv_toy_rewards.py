"""Toy rewards served in the server tests (importable by dotted path in the server subprocess)."""

from mrgrpo.rewards.base import Reward, RewardOutput


class GroupRank(Reward):
    """Group-wise: each image's rank of red value within its group / (G - 1); records the group sizes it saw."""

    name = "group_rank"
    needs_groups = True

    def score(self, images, prompts, metadata):
        groups = {}
        for i, m in enumerate(metadata):
            groups.setdefault(m["group_id"], []).append(i)
        scores = [0.0] * len(images)
        for members in groups.values():
            order = sorted(members, key=lambda i: images[i].getpixel((0, 0))[0])
            for rank, i in enumerate(order):
                scores[i] = rank / max(1, len(members) - 1)
        return RewardOutput(scores, details={"group_sizes": sorted(len(m) for m in groups.values())})


def explode(images, prompts):
    """Raises on the prompt 'boom' (a reward error must not take the server down)."""
    if "boom" in prompts:
        raise RuntimeError("kaboom")
    return [1.0] * len(images)


class Probe(Reward):
    """Luminance score with the mean RGB per image in details; for abuse tests of the server.

    Prompt "boom" raises; "slow:S" sleeps S seconds first. details["alive_before"] counts the images of
    earlier calls still alive (weak references, after a garbage collection), so a test sees whether the
    server keeps old batches.
    """

    name = "probe"

    def __init__(self):
        import weakref

        self._ref = weakref.ref
        self._seen = []  # weak references to the images of earlier calls

    def score(self, images, prompts, metadata):
        import gc
        import time

        import numpy as np

        gc.collect()  # images caught in a reference cycle are garbage, not kept: count only strong references
        self._seen = [r for r in self._seen if r() is not None]
        alive = len(self._seen)
        for p in prompts:
            if p.startswith("slow:"):
                time.sleep(float(p[5:]))
        if "boom" in prompts:
            raise RuntimeError("kaboom")
        means = [np.asarray(im).reshape(-1, 3).mean(axis=0, dtype=np.float64).tolist() for im in images]
        for im in images:
            self._seen.append(self._ref(im))
        lum = [(0.299 * r + 0.587 * g + 0.114 * b) / 255.0 for r, g, b in means]
        return RewardOutput(
            lum, details={"mean_rgb": means, "alive_before": alive, "modes": [im.mode for im in images]}
        )
