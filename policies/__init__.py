"""Built-in diffusion policies, registered lazily in :data:`mrgrpo.registry.POLICIES`.

A new policy implements :class:`mrgrpo.policies.base.DiffusionPolicy` and registers a factory
(decorator, dotted path ``my_pkg.policy:build``, or an entry point in ``mrgrpo.policies``).
"""

from mrgrpo.registry import POLICIES

_BUILTINS = {
    "deepgen": ("mrgrpo.policies.deepgen.policy:build_deepgen", "DeepGen 1.0: Qwen2.5-VL + SCB + SD3.5-M DiT (T2I and editing)"),
    "deepgen-tiny": ("mrgrpo.policies.deepgen.tiny:tiny_deepgen", "toy-size random-init DeepGen built locally (tests, CPU quickstart)"),
    "deepgen-toy": ("mrgrpo.policies.deepgen.toy:toy_deepgen", "tiny DeepGen with an exact pixel autoencoder, 32x32 (the toy world)"),
    "sd3": ("mrgrpo.policies.sd3:build_sd3", "plain SD3 / SD3.5 from a diffusers pipeline folder or id"),
    "sd3-tiny": ("mrgrpo.policies.sd3:tiny_sd3", "toy-size random-init SD3 built locally (tests)"),
}

POLICIES.register_builtins(_BUILTINS)
