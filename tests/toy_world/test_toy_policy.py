"""deepgen-toy: the exact pixel autoencoder, the sft stage's trained parts, save/load."""

from __future__ import annotations

import torch

from mrgrpo.policies.deepgen.toy import PixelAutoencoder


def test_pixel_autoencoder_is_exact_and_shaped_like_a_vae():
    ae = PixelAutoencoder(2)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = ae.encode(x).latent_dist.mode()
    assert z.shape == (3, 12, 16, 16)
    assert torch.equal(ae.decode(z).sample, x)  # PSNR = inf
    assert 2 ** (len(ae.config.block_out_channels) - 1) == 2 and ae.config.latent_channels == 12
    # channel c * 4 + 2 * dy + dx of latent (i, j) is pixel (2i + dy, 2j + dx) of channel c
    assert z[1, 5, 3, 4] == x[1, 1, 2 * 3 + 0, 2 * 4 + 1]


def test_toy_policy_round_trip_stage_and_save(tmp_path):
    from mrgrpo.registry import POLICIES

    policy = POLICIES.build("deepgen-toy")
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(policy.decode(policy.encode_images(images)), images, atol=1e-6)
    policy.set_stage("sft")
    trained = {n.split(".")[0] for n, _ in policy.trainable_parameters()}
    assert trained == {
        "projector_1",
        "projector_2",
        "projector_3",
        "connector",
        "transformer",
    }  # VLM, think tokens frozen
    assert not policy.meta_queries.requires_grad
    with torch.no_grad():
        policy.projector_3.bias.add_(0.5)
        policy.transformer.proj_out.bias.add_(0.25)
    policy.save(str(tmp_path / "p"))
    other = POLICIES.build("deepgen-toy")
    other.load(str(tmp_path / "p"))
    assert torch.equal(other.projector_3.bias, policy.projector_3.bias)
    assert torch.equal(other.transformer.proj_out.bias, policy.transformer.proj_out.bias)
    assert policy.sigmas(10)[-2] < 0.15  # shift 1: the last step starts near sigma 0.1
