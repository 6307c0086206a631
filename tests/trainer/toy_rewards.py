"""Plain-function rewards for the trainer tests (also exercise the function-reward path)."""


def brightness(images, prompts):
    """Mean pixel value of each image in [0, 1]."""
    import numpy as np

    return [float(np.asarray(im, dtype=np.float32).mean() / 255.0) for im in images]


def redness(images, prompts):
    import numpy as np

    return [float(np.asarray(im, dtype=np.float32)[..., 0].mean() / 255.0) for im in images]
