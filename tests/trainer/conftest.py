import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(1)


@pytest.fixture
def toy_recipe(tmp_path):
    """A complete RL recipe dict for the toy policy with plain-function rewards."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(16)) + "\n")
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"another {i}" for i in range(8)) + "\n")
    return {
        "stage": "rl",
        "output_dir": str(tmp_path / "run"),
        "policy": {"name": "toy_policy:ToyPolicy", "kwargs": {"seed": 0}},
        "rewards": {"bright": {"name": "toy_rewards:brightness"}, "red": {"name": "toy_rewards:redness"}},
        "data": {
            "sources": [
                {"name": "a", "path": str(prompts), "weight": 1.0, "rewards": {"bright": 1.0}},
                {"name": "b", "path": str(other), "weight": 1.0, "rewards": {"bright": 0.5, "red": 0.5}},
            ]
        },
        "rl": {
            "sampler": "sde",
            "noise_level": 0.7,
            "num_steps": 6,
            "group_size": 4,
            "height": 16,
            "width": 16,
            "timestep_fraction": 0.6,
            "beta": 0.0,
            "sft_aux_coef": 0.0,
            "clip_range": 1e-3,
        },
        "train": {
            "lr": 3e-3,
            "images_per_step": 16,
            "micro_batch_size": 8,
            "max_steps": 3,
            "mixed_precision": "no",
            "warmup_steps": 0,
            "checkpoint_every": 2,
            "seed": 0,
        },
        "logging": {"tensorboard": False, "progress_bar": False, "sample_every": 100},
        "eval": {"every": 100},
    }
