"""Run by torchrun in test_distributed.py: one MR-GRPO step of the toy recipe, dumping advantages."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from mrgrpo.config import load_recipe  # noqa: E402
from mrgrpo.grpo import train  # noqa: E402

train(load_recipe(data=yaml.safe_load(Path(sys.argv[1]).read_text())))
