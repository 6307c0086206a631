"""mrgrpo: multi-reward GRPO fine-tuning of flow-matching text-to-image and editing models.

Heavy dependencies (torch, transformers, diffusers) are imported lazily by the modules that
need them, so ``import mrgrpo`` and the CLI's ``--help`` stay fast.
"""

__version__ = "0.1.0"
