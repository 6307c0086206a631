"""Built-in rewards, registered lazily in :data:`mrgrpo.registry.REWARDS` (nothing heavy is imported here).

Write your own as a :class:`mrgrpo.rewards.base.Reward` subclass, or a plain function
``f(images, prompts) -> list[float]``; plug it in with a dotted path (``rewards: {mine: {name:
"my_pkg.rewards:score"}}``) or an entry point in the ``mrgrpo.rewards`` group.
"""

from mrgrpo.registry import REWARDS

_BUILTINS = {
    "ocr": ("mrgrpo.rewards.ocr:OCRReward", "OCR accuracy of the quoted text (RapidOCR offline, or PaddleOCR)"),
    "clip": ("mrgrpo.rewards.clip:CLIPScore", "CLIP cosine similarity of image and prompt (open_clip)"),
    "unifiedreward_think": (
        "mrgrpo.rewards.unified_reward:UnifiedRewardThink",
        "pairwise UnifiedReward-Think judge via an OpenAI-compatible server (group win rate)",
    ),
    "unifiedreward-think": ("mrgrpo.rewards.unified_reward:UnifiedRewardThink", "alias of unifiedreward_think"),
    "unifiedreward_point": (
        "mrgrpo.rewards.unified_reward:UnifiedRewardPoint",
        "pointwise UnifiedReward 1-5 score via an OpenAI-compatible server",
    ),
    "brightness": ("mrgrpo.rewards.pixel:Brightness", "mean luminance in [0, 1] (smoke tests)"),
    "color_match": (
        "mrgrpo.rewards.pixel:ColorMatch",
        "closeness of the mean colour to the colour named in the prompt",
    ),
    "jpeg_compressibility": (
        "mrgrpo.rewards.pixel:JPEGCompressibility",
        "negative JPEG size (simpler images score higher)",
    ),
    "remote": ("mrgrpo.rewards.remote:RemoteReward", "a reward served by `mrgrpo serve`, over HTTP"),
}
_BUILTINS.update(
    {  # model-based scorers
        "pickscore": (
            "mrgrpo.rewards.pickscore:PickScore",
            "PickScore (CLIP-H preference model), logit_scale * cosine",
        ),
        "hpsv2": ("mrgrpo.rewards.hps:HPSv2", "HPS v2.1 human preference score (open_clip ViT-H-14), cosine"),
        "imagereward": ("mrgrpo.rewards.imagereward:ImageReward", "ImageReward-v1.0 (BLIP + MLP), normalised score"),
        "aesthetic": ("mrgrpo.rewards.aesthetic:Aesthetic", "LAION improved aesthetic predictor (CLIP ViT-L/14 + MLP)"),
        "image_similarity": (
            "mrgrpo.rewards.similarity:ImageSimilarity",
            "CLIP image-image cosine of result and source (editing)",
        ),
        "vlm_judge": (
            "mrgrpo.rewards.vlm_judge:VLMJudge",
            "P(Yes) of a yes/no question from a VLM server's logprobs (VQAScore style)",
        ),
        "geneval": (
            "mrgrpo.rewards.geneval.reward:GenEvalReward",
            "GenEval clauses (Mask2Former + CLIP colour), partial credit or strict",
        ),
    }
)
# toy-world graders (docs/toy_world.md): soft scores for RL, *_strict pass/fail for evaluation
_BUILTINS.update(
    {
        f"toy_{c}{s}": (
            f"mrgrpo.rewards.toy_world:toy_{c}{s}",
            f"toy world: {c} clause{' (pass/fail)' if s else ' (soft)'}",
        )
        for c in ("color", "shape", "count", "position", "word")
        for s in ("", "_strict")
    }
)
_BUILTINS["toy_shape_margin"] = (
    "mrgrpo.rewards.toy_world:toy_shape_margin",
    "toy world: soft shape score, (1 + IoU(asked shape) - best IoU of the other shapes) / 2",
)
_BUILTINS["toy_geneval"] = (
    "mrgrpo.rewards.toy_world:toy_geneval",
    "toy world: 1 when every clause of the prompt is right",
)

REWARDS.register_builtins(_BUILTINS)
