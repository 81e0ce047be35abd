"""Rectified flow and the MMDiT backbone (Stable Diffusion 3's two changes) in latent diffusion."""

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from conftest import TINY_LDM, run_cli, tiny_train_config
from trilemma.diffusion.latent_diffusion import LatentDiffusion
from trilemma.diffusion.objective import flow_matching_loss
from trilemma.diffusion.sampling import make_sampler, sample
from trilemma.model import TrainableModel

TINY_MMDIT = {**TINY_LDM, "backbone": "mmdit", "prediction_type": "flow", "min_snr_gamma": None,
              "transformer": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "patch_size": 2}}


def test_flow_loss_is_zero_for_the_true_velocity_and_positive_otherwise():
    torch.manual_seed(0)
    x0 = torch.randn(64, 3, 4, 4)
    seen = {}

    def oracle(x_t, timestep):
        # On the straight path x_t = (1 - t) x0 + t noise the velocity is noise - x0 = (x_t - x0) / t.
        t = (timestep / 1000).view(-1, 1, 1, 1)
        seen["t"] = timestep / 1000
        return (x_t - x0) / t

    loss, _ = flow_matching_loss(oracle, x0)
    assert loss.item() < 1e-6
    t = seen["t"]
    assert 0 < t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.15  # logit-normal around the middle
    wrong, _ = flow_matching_loss(lambda x_t, timestep: torch.zeros_like(x_t), x0)
    assert wrong.item() > 1.0  # E|noise - x0|^2 = 2 per element


def test_flow_samplers_carry_the_exact_velocity_of_one_point_to_it():
    # For data that is a single point x0, the true velocity field is (x_t - x0) / t: every flow sampler must land
    # on x0, which checks the loop's timestep and sigma conventions against diffusers' schedulers.
    target = torch.full((2, 1, 2, 2), 0.7)
    config = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).config

    def velocity(x_t, timestep):
        t = torch.as_tensor(timestep, dtype=x_t.dtype) / 1000
        return (x_t - target) / t.clamp(min=1e-4)

    for name in ("euler", "heun", "dpmsolver++"):
        x = sample(velocity, (1, 2, 2), [0, 1], make_sampler(name, config), steps=8)
        assert torch.allclose(x, target, atol=2e-2), name


def test_a_flow_model_refuses_what_is_written_for_noise_schedules_in_one_line():
    torch.manual_seed(0)
    model = LatentDiffusion.from_config(TINY_MMDIT).eval()
    with pytest.raises(ValueError, match="rectified-flow model samples with euler, heun, dpmsolver\\+\\+"):
        model.generate(["a red circle"], sampler="ddim")
    with pytest.raises(ValueError, match="clip_guidance"):
        model.generate(["a red circle"], clip_guidance=1.0)
    image = model.generate(["a red circle"], steps=2)[0]
    with pytest.raises(ValueError, match="rectified flow"):
        model.inpaint(["a red circle"], image, image.convert("L"), steps=2)
    with pytest.raises(ValueError, match="backbone 'dit'"):
        LatentDiffusion.from_config({**TINY_LDM, "backbone": "dit"})
    with pytest.raises(ValueError, match="patch_size 3"):
        LatentDiffusion.from_config({**TINY_MMDIT, "transformer": {**TINY_MMDIT["transformer"], "patch_size": 3}})


@pytest.mark.parametrize("backbone", ["unet", "mmdit"])
def test_flow_trains_and_draws_text_to_image_with_guidance_negative_prompts_and_img2img(tmp_path, tiny_autoencoder_dir,
                                                                                      backbone):
    model = TINY_MMDIT if backbone == "mmdit" else {**TINY_LDM, "prediction_type": "flow"}
    config = tiny_train_config(tmp_path, tiny_autoencoder_dir, model=model)
    rc, _, stderr = run_cli("train", config)
    assert rc == 0, stderr[-3000:]
    trained = TrainableModel.from_pretrained(tmp_path / "run" / "final").eval()
    assert trained.config.prediction_type == "flow" and trained.config.backbone == backbone
    prompts = ["a red circle", "two blue squares"]
    for sampler in ("euler", "heun", "dpmsolver++"):
        a = trained.generate(prompts, steps=3, sampler=sampler, guidance_scale=3.0, seed=5)
        b = trained.generate(prompts, steps=3, sampler=sampler, guidance_scale=3.0, seed=5)
        assert [im.tobytes() for im in a] == [im.tobytes() for im in b]  # seeded
        assert a[0].size == (64, 64)
    plain = trained.generate(prompts[:1], steps=3, seed=5)[0]
    negative = trained.generate(prompts[:1], steps=3, seed=5, negative_prompt="a blue circle")[0]
    assert plain.tobytes() != negative.tobytes()
    # img2img: a small strength stays near the input, which a full strength does not
    near = trained.generate(prompts[:1], steps=10, init_image=plain, strength=0.2, seed=1)[0]
    far = trained.generate(prompts[:1], steps=10, init_image=plain, strength=1.0, seed=1)[0]
    def diff(a, b):
        return np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean()

    assert diff(near, plain) < diff(far, plain)


def test_the_mmdit_exports_and_its_transformer_folder_loads_in_diffusers(tmp_path):
    torch.manual_seed(0)
    model = LatentDiffusion.from_config(TINY_MMDIT).eval()
    model.save_pretrained(tmp_path / "model")
    code, _, err = run_cli("export", tmp_path / "model", tmp_path / "exported", "--format", "diffusers")
    assert code == 0, err[-2000:]
    assert not (tmp_path / "exported" / "model_index.json").exists()  # no pipeline claims it (the docstring says why)
    loaded = SD3Transformer2DModel.from_pretrained(tmp_path / "exported" / "transformer").eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "exported" / "scheduler")
    assert scheduler.config.shift == model.config.flow_shift
    x = torch.randn(2, 4, 16, 16)
    states, mask = model.encode_text(["a red circle", "a blue square above a green circle"])
    with torch.no_grad():
        ours = model.denoise(x, torch.tensor(500.0), states, mask)
        # What trilemma.json says the transformer takes: the token states and their mean over the prompt's tokens.
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        theirs = loaded(hidden_states=x, encoder_hidden_states=states, pooled_projections=pooled,
                        timestep=torch.tensor([500.0, 500.0])).sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert "pooled_projections" in json.loads((tmp_path / "exported" / "trilemma.json").read_text())["inputs"]


def test_train_data_picks_the_transformer(tmp_path):
    from test_data import make_metadata_folder

    folder = make_metadata_folder(tmp_path / "tiles", n=12)
    out = tmp_path / "model"
    rc, _, stderr = run_cli("train", "--data", folder, "--family", "diffusion", "--backbone", "mmdit", "--minutes",
                            "0.1", "--resolution", "16", "--out", out)
    assert rc == 0, stderr[-3000:]
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["backbone"] == "mmdit" and config["prediction_type"] == "flow"
    rc, _, stderr = run_cli("generate", "a zebra in a hat", "--model", out, "--out", tmp_path / "gen")
    assert rc == 0, stderr[-3000:]
    rc, _, stderr = run_cli("train", "--data", folder, "--family", "gan", "--backbone", "mmdit", "--out", tmp_path / "g")
    assert rc != 0 and "backbone" in stderr and "Traceback" not in stderr
