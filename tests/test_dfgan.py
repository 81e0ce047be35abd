"""DF-GAN: deep fusion, one-way discriminator, MA-GP, divergence stop, interpolation and truncation."""

import json

import numpy as np
import pytest
import torch

import trilemma
from trilemma.gan.dfgan import DFGAN, Affine

from conftest import assert_same_image

TINY_GAN = {"resolution": 32, "z_dim": 16, "ngf": 8, "ndf": 8, "affine_hidden": 16,
            "text_encoder": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}}


def test_fusion_starts_as_the_identity_and_generator_draws_its_resolution():
    affine = Affine(10, 4, 8)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(affine(x, torch.randn(2, 10)), x)
    torch.manual_seed(0)
    model = DFGAN.from_config(TINY_GAN).eval()
    images = model.generate(["a red circle", "two blue squares"], seed=0)
    assert [im.size for im in images] == [(32, 32)] * 2
    again = model.generate(["two blue squares"], seed=1)  # image i uses seed + i
    assert_same_image(images[1], again[0])


def test_matching_aware_gradient_penalty_is_k_times_mean_norm_to_the_p():
    torch.manual_seed(0)
    model = DFGAN.from_config(TINY_GAN)
    real = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    sentence = torch.randn(3, 32, requires_grad=True)
    logits = model.discriminator.logits(model.discriminator.features(real), sentence)
    gp = model.matching_aware_gradient_penalty(real, sentence, logits)
    gi, gs = torch.autograd.grad(logits.sum(), (real, sentence), retain_graph=True)
    norms = torch.cat([gi.flatten(1), gs.flatten(1)], 1).norm(dim=1)
    assert torch.allclose(gp, 2.0 * norms.pow(6).mean())
    gp.backward()  # the penalty trains the discriminator (second-order gradients)
    assert model.discriminator.conv_img.weight.grad.abs().sum() > 0


def test_losses_train_the_right_player():
    torch.manual_seed(0)
    model = DFGAN.from_config(TINY_GAN).train()
    opts = model.configure_optimizers(1e-4)
    assert list(opts) == ["discriminator", "generator"]
    assert opts["discriminator"].param_groups[0]["lr"] == pytest.approx(4e-4)
    assert opts["generator"].param_groups[0]["betas"] == (0.0, 0.9)
    batch = {"pixel_values": torch.rand(4, 3, 32, 32) * 2 - 1, "text": ["a red circle", "two blue squares", "a green star", "a cyan square"]}
    out = model.training_step(batch, "discriminator")
    out["loss"].backward()
    assert {"d_real", "d_fake", "d_mismatch", "ma_gp"} <= set(out)
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is None for p in model.text_encoder.parameters())  # frozen
    model.zero_grad()
    model.training_step(batch, "generator")["loss"].backward()
    assert model.generator.fc.weight.grad.abs().sum() > 0


def test_gan_trains_through_the_loop_and_divergence_stops_it(tmp_path):
    from trilemma.train.loop import TrainConfig, TrainingDiverged, train

    # Hard mismatched pairs work on the rendering dataset too (the latent test covers the cache).
    common = dict(model_class="DFGAN", model={**TINY_GAN, "hard_mismatch": True}, data={"resolution": 32}, batch_size=2, learning_rate=1e-4,
                  warmup_steps=1, sample_every=0, log_every=1)
    final = train(TrainConfig(**common, output_dir=str(tmp_path / "run"), steps=2, checkpoint_every=2))
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert {"discriminator/ma_gp", "discriminator/d_real", "generator/g"} <= set(row)
    assert trilemma.load(final).generate(["a red circle"])[0].size == (32, 32)
    # An exploding loss stops the run with a clear message, the last good checkpoint kept.
    with pytest.raises(TrainingDiverged, match="above max_loss"):
        train(TrainConfig(**common, output_dir=str(tmp_path / "bad"), steps=4, checkpoint_every=1, max_loss=-1.0))


def test_interpolation_ends_at_the_two_prompts_and_truncation_bounds_z(tmp_path):
    torch.manual_seed(0)
    model = DFGAN.from_config(TINY_GAN).eval()
    strip = model.interpolate("a red circle", "a blue square", steps=5, seed=7)
    assert len(strip) == 5
    assert_same_image(strip[0], model.generate(["a red circle"], seed=7)[0])
    assert_same_image(strip[-1], model.generate(["a blue square"], seed=8)[0])
    for m in model.modules():  # untrained fusion is the identity: give the text a say, as training does
        if isinstance(m, Affine):
            torch.nn.init.normal_(m.beta[2].weight, std=0.5)
    text_only = model.interpolate("a red circle", "a blue square", steps=3, seed=7, mode="text")
    assert not np.array_equal(np.asarray(text_only[0]), np.asarray(text_only[-1]))
    z = model.noise(list(range(20)), truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    model.save_pretrained(tmp_path / "gan")
    from trilemma.cli import main

    assert main(["interpolate", "a red circle", "a blue square", "--model", str(tmp_path / "gan"), "--steps", "4",
                 "--out", str(tmp_path / "strip")]) == 0
    assert (tmp_path / "strip" / "strip.png").is_file() and len(list((tmp_path / "strip").glob("0*.png"))) == 4


TINY_AE = {"resolution": 32, "block_out_channels": [8, 8, 8], "latent_channels": 4, "norm_num_groups": 4}


def test_latent_gan_draws_the_autoencoders_latent_and_decodes_it():
    torch.manual_seed(0)
    model = DFGAN.from_config({**TINY_GAN, "autoencoder": TINY_AE, "latent_blocks": 1}).eval()
    assert model.config.grid == 8
    z, s = model.noise([0, 1]), model.sentence_embedding(["a red circle", "two blue squares"])
    with torch.no_grad():
        latents = model.generator(z, s)
    assert latents.shape == (2, 4, 8, 8)
    assert isinstance(model.generator.to_rgb[-1], torch.nn.Identity)  # no tanh bounds a unit-variance latent
    # The discriminator reads latents, not pixels.
    assert model.discriminator.features(latents).shape[-1] == 4
    images = model.generate(["a red circle", "two blue squares"], seed=0)
    with torch.no_grad():
        expected = model.autoencoder.decode(latents / model.config.latent_scale).clamp(-1, 1)
    assert [im.size for im in images] == [(32, 32)] * 2
    assert np.abs(np.asarray(images[0], dtype=float) - ((expected[0].permute(1, 2, 0).numpy() + 1) * 127.5)).max() <= 1.0
    with pytest.raises(ValueError, match="at least 8x8"):
        DFGAN.from_config({**TINY_GAN, "autoencoder": {**TINY_AE, "block_out_channels": [8, 8, 8, 8]}})


def test_latent_gan_trains_on_cached_latents_of_a_saved_autoencoder(tmp_path):
    from trilemma.autoencoders.kl import KLAutoencoder
    from trilemma.train.loop import TrainConfig, train

    torch.manual_seed(0)
    autoencoder = KLAutoencoder.from_config(TINY_AE)
    autoencoder.save_pretrained(tmp_path / "ae")
    config = TrainConfig(model_class="DFGAN", model={**TINY_GAN, "autoencoder": TINY_AE, "latent_blocks": 1,
                                                     "hard_mismatch": True, "whiten_text": True},
                         init={"autoencoder": str(tmp_path / "ae")}, data={"resolution": 32, "cache_latents": 8},
                         batch_size=2, learning_rate=1e-4, steps=2, checkpoint_every=2, sample_every=0, log_every=1,
                         output_dir=str(tmp_path / "run"))
    final = train(config)
    assert (tmp_path / "run" / "latent_cache" / "model.safetensors").is_file()
    model = trilemma.load(final)
    assert model.config.latent_scale != 1.0  # set from the cached latents' spread
    assert not torch.equal(model.text_whitening, torch.eye(32))  # fitted on the training captions
    # The frozen autoencoder ships inside the GAN, unchanged by training.
    for k, v in autoencoder.state_dict().items():
        assert torch.equal(model.autoencoder.state_dict()[k], v), k
    assert model.generate(["a red circle"])[0].size == (32, 32)
    # Hard mismatches: half the mismatched pairs are the scenes' contradicting captions.
    batch = {"latents": torch.randn(4, 4, 8, 8), "text": ["a red circle"] * 4, "negative_text": ["a blue circle"] * 4}
    model.train()
    loss = model.training_step(batch, "discriminator")["d_mismatch"]
    model.config.hard_mismatch = False
    assert loss != model.training_step(batch, "discriminator")["d_mismatch"]
    bad = TrainConfig(**{**config.__dict__, "model": {**TINY_GAN, "autoencoder": {**TINY_AE, "latent_channels": 3}},
                         "output_dir": str(tmp_path / "bad")})
    with pytest.raises(ValueError, match="its latents are 4 x 8.2 at 32 px, but this GAN was built for 3 x 8.2"):
        train(bad)


def test_whitened_sentence_has_unit_variance_on_the_fitted_captions(tmp_path):
    from trilemma.shapes.dataset import ShapesDataset

    torch.manual_seed(0)
    model = DFGAN.from_config({**TINY_GAN, "whiten_text": True, "whiten_eps": 1e-6}).eval()
    data = ShapesDataset("train", 32, 0)
    captions = [data.scene(i).caption(np.random.default_rng(i)) for i in range(400)]
    raw = model.sentence_embedding(captions)  # identity whitening until fitted
    model.fit_whitening(captions)
    white = model.sentence_embedding(captions)
    assert white.mean(0).abs().max() < 1e-3
    cov = torch.cov(white.T)
    assert torch.allclose(cov, torch.eye(cov.shape[0]), atol=0.05), (cov - torch.eye(cov.shape[0])).abs().max()
    assert torch.cov(raw.T).diagonal().mean() < 0.5  # the raw embedding's spread is far from unit
    # The statistics travel with the weights.
    model.save_pretrained(tmp_path / "gan")
    again = trilemma.load(tmp_path / "gan")
    assert torch.allclose(again.sentence_embedding(captions[:3]), white[:3], atol=1e-4)
