"""CLIP guidance (GLIDE) and the noise-aware CLIP it reads with."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from test_imagen import TINY_IMAGEN


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_guided_output_shifts_the_implied_noise(prediction_type):
    from trilemma.diffusion.guidance import guided_output

    torch.manual_seed(0)
    x_t, out, g = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    alpha_bar = torch.tensor(0.3).view(1, 1, 1, 1)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    to_eps = {"epsilon": lambda o: o, "v_prediction": lambda o: s * x_t + a * o, "sample": lambda o: (x_t - a * o) / s}[prediction_type]
    zero = guided_output(out, x_t, alpha_bar, 5, prediction_type, lambda *args: torch.zeros_like(x_t))
    torch.testing.assert_close(zero, out, atol=1e-5, rtol=1e-5)  # no gradient: the model's own output
    guided = guided_output(out, x_t, alpha_bar, 5, prediction_type, lambda *args: g)
    # Dhariwal & Nichol eq. 14: eps' = eps - sqrt(1 - alpha_bar) * gradient, whatever the model predicts.
    torch.testing.assert_close(to_eps(guided), to_eps(out) - s * g, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_noised_clip(tiny_clip_dir, tmp_path_factory):
    from trilemma.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("noised") / "run"
    cfg = {"model_class": "NoiseAwareCLIP", "model": {"clip": str(tiny_clip_dir), "resolution": 16, "patch_size": 4,
                                                      "hidden_size": 32, "num_layers": 1, "num_heads": 2},
           "data": {"resolution": 64}, "output_dir": str(out), "steps": 2, "batch_size": 8, "ema_decay": 0,
           "checkpoint_every": 0, "sample_every": 0, "log_every": 1, "warmup_steps": 1}
    return train(TrainConfig.from_dict(cfg), progress=False)


def test_noised_clip_keeps_the_clip_out_of_its_checkpoint(tiny_noised_clip, tiny_clip_dir):
    from safetensors.torch import load_file

    from trilemma.model import TrainableModel

    keys = load_file(tiny_noised_clip / "model.safetensors")
    assert keys and not any(k.startswith("text_clip") for k in keys)
    config = json.loads((tiny_noised_clip / "config.json").read_text())["config"]
    assert config["clip"] == str(tiny_clip_dir) and len(config["clip_sha256"]) == 64
    model = TrainableModel.from_pretrained(tiny_noised_clip)
    emb = model.embed_noisy_images(torch.randn(3, 3, 16, 16), torch.tensor([0, 500, 999]))
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    config["clip_sha256"] = "0" * 64  # another CLIP under the same path: refused, not silently used
    with pytest.raises(ValueError, match="changed"):
        type(model).from_config(config)


def test_clip_guidance_steers_a_cascade_and_zero_changes_nothing(tiny_noised_clip):
    from trilemma.diffusion.imagen import ImagenCascade

    torch.manual_seed(0)
    model = ImagenCascade.from_config(TINY_IMAGEN).eval()
    opts = dict(steps=3, sr_steps=2)
    plain = model.generate(["a red circle", "two blue squares"], seed=1, **opts)
    zero = model.generate(["a red circle", "two blue squares"], seed=1, clip_guidance=0.0, guidance_clip=str(tiny_noised_clip), **opts)
    guided = model.generate(["a red circle", "two blue squares"], seed=1, clip_guidance=100.0, guidance_clip=str(tiny_noised_clip), **opts)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, zero))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, guided))


def test_clip_guidance_steers_a_latent_model(tiny_ldm_dir, tiny_clip_dir):
    import trilemma

    model = trilemma.load(tiny_ldm_dir)
    plain = model.generate(["a red circle"], seed=2, steps=3)
    guided = model.generate(["a red circle"], seed=2, steps=3, clip_guidance=50.0, guidance_clip=str(tiny_clip_dir))
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(guided[0]))


def test_clip_guidance_on_the_cli(tiny_ldm_dir, tiny_clip_dir, tiny_noised_clip, tmp_path):
    code, out, err = run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--steps", "2", "--clip-guidance", "10",
                             "--guidance-clip", tiny_clip_dir, "--out", tmp_path / "o")
    assert code == 0, err
    assert (tmp_path / "o" / "000000.png").is_file()
    code, out, err = run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--clip-guidance", "-1", "--out", tmp_path / "p")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "clip-guidance" in err
    # A pixel model needs a CLIP that reads noisy images: an ordinary CLIP is refused with the reason.
    code, out, err = run_cli("generate", "a red circle", "--model", "shapes-imagen", "--steps", "2", "--clip-guidance", "10",
                             "--guidance-clip", tiny_clip_dir, "--out", tmp_path / "q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "noise-aware" in err, err
