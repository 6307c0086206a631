"""Built-in diffusion policies, registered lazily in :data:`mrgrpo.registry.POLICIES`.

A new policy implements :class:`mrgrpo.policies.base.DiffusionPolicy` and registers a factory
(decorator, dotted path ``my_pkg.policy:build``, or an entry point in ``mrgrpo.policies``).
"""

from mrgrpo.registry import POLICIES

_BUILTINS = {
    "deepgen": (
        "mrgrpo.policies.deepgen.policy:build_deepgen",
        "DeepGen 1.0: Qwen2.5-VL + SCB + SD3.5-M DiT (T2I and editing)",
    ),
    "deepgen-tiny": (
        "mrgrpo.policies.deepgen.tiny:tiny_deepgen",
        "toy-size random-init DeepGen built locally (tests, CPU quickstart)",
    ),
    "deepgen-toy": (
        "mrgrpo.policies.deepgen.toy:toy_deepgen",
        "tiny DeepGen with an exact pixel autoencoder, 32x32 (the toy world)",
    ),
    "sd3": ("mrgrpo.policies.sd3:build_sd3", "plain SD3 / SD3.5 from a diffusers pipeline folder or id"),
    "sd3-tiny": ("mrgrpo.policies.sd3:tiny_sd3", "toy-size random-init SD3 built locally (tests)"),
    "flux": (
        "mrgrpo.policies.flux:build_flux",
        "FLUX.1-dev (T2I) or FLUX.1-Kontext-dev (editing) from a diffusers pipeline folder or id",
    ),
    "flux-tiny": ("mrgrpo.policies.flux_tiny:tiny_flux", "toy-size random-init FLUX.1-dev built locally (tests)"),
    "qwen_image": (
        "mrgrpo.policies.qwen_image:build_qwen_image",
        "Qwen-Image (T2I) or Qwen-Image-Edit (editing) from a diffusers pipeline folder or id",
    ),
    "qwen_image-tiny": (
        "mrgrpo.policies.qwen_image_tiny:tiny_qwen_image",
        "toy-size random-init Qwen-Image built locally (tests)",
    ),
    "qwen_image-edit-tiny": (
        "mrgrpo.policies.qwen_image_tiny:tiny_qwen_image_edit",
        "toy-size random-init Qwen-Image-Edit built locally (tests)",
    ),
    "flux-kontext-tiny": (
        "mrgrpo.policies.flux_tiny:tiny_flux_kontext",
        "toy-size random-init FLUX.1-Kontext built locally (tests)",
    ),
}

POLICIES.register_builtins(_BUILTINS)
