"""The Imagen-style cascade: stages, noise conditioning augmentation, training through the one loop."""

import json

import numpy as np
import pytest
import torch

import trilemma
from trilemma.diffusion.imagen import ImagenCascade

TINY_IMAGEN = {"resolutions": [16, 32], "unet_channels": [[16, 32], [16, 32]], "attention_head_dim": 8,
               "text_encoder": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "architecture": "t5"},
               "sampling_steps": 3, "sr_sampling_steps": 2}


def test_cascade_round_trips_and_generates_its_last_resolution(tmp_path):
    torch.manual_seed(0)
    model = ImagenCascade.from_config(TINY_IMAGEN)
    model.save_pretrained(tmp_path / "m")
    again = trilemma.load(tmp_path / "m")
    prompts = ["a red circle above a blue square", "three green circles"]
    a, b = model.generate(prompts, seed=4), again.generate(prompts, seed=4, batch_size=1)
    assert [im.size for im in a] == [(32, 32)] * 2
    # Same seed, same image, any batch size: to within one level of rounding, since a convolution's float sums
    # depend on the batch shape (about 5e-6 here), which can move a pixel across a rounding boundary.
    for x, y in zip(a, b):
        diff = np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert model.generate(prompts[:1], seed=4, stages=1)[0].size == (16, 16)


def test_noise_conditioning_augmentation_level_is_an_input():
    torch.manual_seed(0)
    model = ImagenCascade.from_config(TINY_IMAGEN).eval()
    low, noise = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16)
    clean = model.low_res_condition(1, low, torch.zeros(2), noise)
    assert torch.allclose(clean, torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear"), atol=1e-2)
    noisy = model.low_res_condition(1, low, torch.ones(2), noise)
    assert (noisy - clean).abs().mean() > 0.5  # level 1: the condition is mostly noise
    states, mask = model.encode_text(1, ["a red circle", "a red circle"])
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([500, 500])
    with torch.no_grad():
        out0 = model.denoise(1, x, t, states, mask, clean, torch.tensor([0, 0]))
        out1 = model.denoise(1, x, t, states, mask, clean, torch.tensor([900, 900]))
    assert not torch.allclose(out0, out1)


def test_dynamic_thresholding_is_a_generate_option():
    torch.manual_seed(0)
    model = ImagenCascade.from_config(TINY_IMAGEN)
    images = {m: model.generate(["a red circle"], seed=1, thresholding=m, guidance_scale=20.0)[0] for m in ("none", "dynamic")}
    assert images["none"].tobytes() != images["dynamic"].tobytes()
    with pytest.raises(ValueError, match="thresholding must be one of none, static, dynamic"):  # its declaration
        model.generate(["a red circle"], thresholding="soft")


def test_dynamic_thresholding_cap_is_per_stage_and_overridable():
    torch.manual_seed(0)
    model = ImagenCascade.from_config(TINY_IMAGEN)
    assert model._threshold_caps(None) == [1.5] + [1.0] * (len(model.config.resolutions) - 1)  # DeepFloyd IF's
    assert model._threshold_caps(float("inf")) == [float("inf")] * len(model.config.resolutions)
    run = lambda **o: model.sample_tensors(["a red circle"], seed=1, guidance_scale=20.0, thresholding="dynamic", **o)  # noqa: E731
    capped, uncapped = run(), run(threshold_max_value=float("inf"), threshold_percentile=0.995)
    assert not torch.equal(capped, uncapped)
    assert torch.equal(run(threshold_max_value=1.0), model.sample_tensors(["a red circle"], seed=1, guidance_scale=20.0,
                                                                          thresholding="static"))
    with pytest.raises(ValueError, match=r"threshold_max_value must be a number in \[1.0, inf\)"):
        run(threshold_max_value=0.5)


def test_every_stage_trains_through_the_one_loop(tmp_path):
    from trilemma.train.loop import TrainConfig, train

    config = TrainConfig(model_class="ImagenCascade", model=TINY_IMAGEN, data={"resolution": 32},
                         output_dir=str(tmp_path / "run"), steps=2, batch_size=2, learning_rate=1e-3, warmup_steps=1,
                         checkpoint_every=2, sample_every=0, log_every=1)
    final = train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"stage0/loss", "stage1/loss"} <= set(rows[-1])
    assert trilemma.load(final).generate(["a red circle"], seed=0)[0].size == (32, 32)


def test_train_stages_selects_the_optimizers():
    model = ImagenCascade.from_config({**TINY_IMAGEN, "train_stages": [1]})
    assert list(model.configure_optimizers(1e-3)) == ["stage1"]
    with pytest.raises(ValueError, match="train_stages"):
        ImagenCascade.from_config({**TINY_IMAGEN, "train_stages": [2]}).configure_optimizers(1e-3)


def test_learned_variance_bound_is_zero_at_the_true_posterior():
    """Improved DDPM's L_vlb: with the true mean, v = -1 (the posterior variance beta~_t) gives KL 0."""
    from diffusers import DDPMScheduler

    from trilemma.diffusion.objective import vlb_term

    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    torch.manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([1, 10, 300, 700])  # near T, beta_t and beta~_t all but coincide
    x_t = scheduler.add_noise(x0, torch.randn_like(x0), t)
    at_posterior = vlb_term(scheduler, x0, x_t, t, x0, -torch.ones_like(x0))
    at_beta = vlb_term(scheduler, x0, x_t, t, x0, torch.ones_like(x0))
    assert at_posterior.abs().max() < 1e-4
    assert (at_beta > at_posterior).all()
    wrong_mean = vlb_term(scheduler, x0, x_t, t, -x0, -torch.ones_like(x0))
    assert (wrong_mean > 1e-3).all()
    # t = 0 is the discretized decoder's negative log-likelihood: finite and positive.
    nll = vlb_term(scheduler, x0, x0, torch.zeros(4, dtype=torch.long), x0, torch.zeros_like(x0))
    assert torch.isfinite(nll).all() and (nll > 0).all()


def test_learned_variance_trains_and_samples_with_every_sampler():
    torch.manual_seed(0)
    model = ImagenCascade.from_config({**TINY_IMAGEN, "variance_type": "learned_range"})
    assert model.unets[0].config.out_channels == 6 and model.noise_scheduler.config.variance_type == "learned_range"
    batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "text": ["a red circle", "two blue squares"]}
    for stage in model.stages:
        loss = model.training_step(batch, f"stage{stage}")["loss"]
        loss.backward()
        assert torch.isfinite(loss)
    grads = model.unets[0].conv_out.weight.grad
    assert grads[3:].abs().sum() > 0  # the variance channels get gradients (from the bound)
    model.eval()
    for sampler in ("ddpm", "ddim", "dpmsolver++"):
        images = model.generate(["a red circle"], seed=0, sampler=sampler)
        assert images[0].size == (32, 32)
    with pytest.raises(ValueError, match="variance_type"):
        ImagenCascade.from_config({**TINY_IMAGEN, "variance_type": "learned"})


def test_sr_stage_trains_on_crops_and_samples_whole_images():
    torch.manual_seed(0)
    model = ImagenCascade.from_config({**TINY_IMAGEN, "sr_crop": 16, "sr_attention_levels": 1})
    assert model.unets[1].config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    # Crops: the SR stage keeps text cross-attention, no self-attention (which would not carry over to whole images).
    assert model.unets[1].config.only_cross_attention and model.unets[1].config.mid_block_type == "UNetMidBlock2D"
    seen = []
    hook = model.unets[1].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-1]))
    model.training_step({"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "text": ["a red circle"] * 2}, "stage1")
    hook.remove()
    assert seen == [16]
    seen.clear()
    model.config.sr_batch_size = 1  # the SR stage trains on the first sample of each batch only
    hook = model.unets[1].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    model.training_step({"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "text": ["a red circle"] * 2}, "stage1")
    hook.remove()
    assert seen == [1]
    assert model.generate(["a red circle"], seed=0, sr_guidance_scale=1.0)[0].tobytes() != \
        model.generate(["a red circle"], seed=0)[0].tobytes()
    assert model.generate(["a red circle"], seed=0)[0].size == (32, 32)
    with pytest.raises(ValueError, match="sr_crop"):
        ImagenCascade.from_config({**TINY_IMAGEN, "sr_crop": 15})


def test_stages_start_from_another_cascade_and_self_attention_is_an_option(tmp_path):
    from trilemma.train.loop import TrainConfig, train

    torch.manual_seed(0)
    donor = ImagenCascade.from_config({**TINY_IMAGEN, "sr_crop": 16})
    donor.save_pretrained(tmp_path / "donor")
    # The same SR U-Net on whole images: self-attention off explicitly, so the weights fit.
    config = {**TINY_IMAGEN, "sr_self_attention": False, "train_stages": [1]}
    assert ImagenCascade.from_config(config).unets[1].config.only_cross_attention
    assert not ImagenCascade.from_config(TINY_IMAGEN).unets[1].config.only_cross_attention
    run = TrainConfig(model_class="ImagenCascade", model=config, data={"resolution": 32},
                      init={"stages": {"0": str(tmp_path / "donor"), "1": str(tmp_path / "donor")}},
                      output_dir=str(tmp_path / "run"), steps=1, batch_size=2, learning_rate=1e-3, warmup_steps=1,
                      checkpoint_every=1, sample_every=0, ema_decay=0)
    final = ImagenCascade.from_pretrained(train(run))
    same = lambda a, b: all(torch.equal(x.float(), y.float()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert same(final.unets[0], donor.unets[0])  # the base came over and was not trained
    assert not same(final.unets[1], donor.unets[1])  # the SR stage came over and trained one step


def test_each_stage_can_have_its_own_text_encoder(tmp_path):
    """A frozen pretrained encoder under the base, a trained one in the SR stage; only the trained one is saved."""
    from conftest import save_tiny_text_model

    folder = save_tiny_text_model("t5", tmp_path / "t5")
    trained = TINY_IMAGEN["text_encoder"]
    torch.manual_seed(0)
    model = ImagenCascade.from_config({**TINY_IMAGEN, "text_encoder": [{"pretrained": str(folder)}, trained]})
    assert model.external_prefixes() == ("text_encoders.0.",)
    assert not any(p.requires_grad for p in model.text_encoders[0].parameters())
    model.save_pretrained(tmp_path / "m")
    again = trilemma.load(tmp_path / "m")
    assert again.to_config()["text_encoder"][1] == trained
    prompts = ["a red circle above a blue square"]
    assert model.generate(prompts, seed=1)[0].tobytes() == again.generate(prompts, seed=1)[0].tobytes()
    with pytest.raises(ValueError, match="one text_encoder spec per stage"):
        ImagenCascade.from_config({**TINY_IMAGEN, "text_encoder": [trained]})
