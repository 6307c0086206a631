"""A compositional toy world that runs on CPU: proof that MR-GRPO improves a model.

* :mod:`~mrgrpo.toy_world.grammar`: prompts (colour x shape, count, relative position, word), their
  parse, and the held-out split of colour-shape pairs;
* :mod:`~mrgrpo.toy_world.render`: the ideal image of a scene (and the ideal shape masks the
  graders compare against);
* :mod:`~mrgrpo.toy_world.build`: prompt files and the synthetic SFT data set of a world;
* :mod:`~mrgrpo.toy_world.pipeline`: SFT, then MR-GRPO on several seeds, then held-out evaluation
  (``python -m mrgrpo.toy_world.pipeline``, ``make toy-world``).

The graders are ordinary rewards (``mrgrpo.rewards.toy_world``); the policy is ``deepgen-toy``
(``mrgrpo.policies.deepgen.toy``). See docs/toy_world.md.
"""
