"""The Imagen-style cascade: stages, noise conditioning augmentation, training through the one loop."""

import json

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
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]  # same seed, same bytes, any batch size
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
    with pytest.raises(ValueError, match="unknown thresholding"):
        model.generate(["a red circle"], thresholding="soft")


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
