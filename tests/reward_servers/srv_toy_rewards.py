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
