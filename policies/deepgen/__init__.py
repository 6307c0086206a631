"""DeepGen 1.0 policy: Qwen2.5-VL + Stacked Channel Bridging + think tokens + SD3.5-M DiT.

Modules (imported lazily by the registry; nothing heavy is imported here):

* ``policy``: :class:`~mrgrpo.policies.deepgen.policy.DeepGenPolicy` and the ``deepgen`` factory;
* ``scb``: the connector (released parameter names) and masked pooling;
* ``dit``: the SD3 DiT forward with reference-image tokens and padding masks;
* ``checkpoint``: :func:`~mrgrpo.policies.deepgen.checkpoint.load_deepgen_checkpoint` for released weights;
* ``tiny``: the toy-size model built locally (``deepgen-tiny``).
"""
