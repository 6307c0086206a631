"""GenEval (Ghosh et al., 2023) without mmdetection: its grading rules on transformers' Mask2Former and CLIP.

* :mod:`.grader`: the rules (thresholds, counting, colour, relative position), pure functions of detections;
* :mod:`.detector`: Mask2Former (``facebook/mask2former-swin-small-coco-instance``) with mmdet's post-processing;
* :mod:`.color`: the CLIP zero-shot colour classifier on masked crops;
* :mod:`.reward`: the ``geneval`` reward, :class:`~.reward.GenEvalGrader` and :func:`~.reward.geneval_score`.

``assets/`` holds GenEval's prompt metadata (MIT licence, see ``assets/SOURCE.md``).
"""
