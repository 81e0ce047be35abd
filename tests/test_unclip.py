"""unCLIP (trilemma/diffusion/unclip.py): a prior from CLIP text to image embeddings, a decoder from image
embeddings, variations and interpolation, on a tiny CLIP and a tiny cascade the tests build themselves."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import trilemma
from conftest import run_cli
from trilemma.diffusion.imagen import ImagenCascade
from trilemma.diffusion.unclip import UnCLIP, slerp

TINY_IMAGEN = {"resolutions": [16, 32], "unet_channels": [[16, 32], [16, 32]], "attention_head_dim": 8,
               "text_encoder": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "architecture": "t5"},
               "sampling_steps": 3, "sr_sampling_steps": 2}


@pytest.fixture(scope="module")
def tiny_cascade_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-cascade"
    ImagenCascade.from_config(TINY_IMAGEN).save_pretrained(path)
    return path


def tiny_unclip_config(clip_dir, cascade_dir, **overrides) -> dict:
    return {**TINY_IMAGEN, "clip": str(clip_dir), "sr_from": str(cascade_dir), "prior_steps": 3,
            "prior": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8}, **overrides}


@pytest.fixture(scope="module")
def tiny_unclip_dir(tmp_path_factory, tiny_clip_dir, tiny_cascade_dir):
    """A tiny unCLIP trained a few steps through the one loop, its decoder started from the tiny cascade."""
    from trilemma.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "unclip"
    config = TrainConfig(model_class="UnCLIP", model=tiny_unclip_config(tiny_clip_dir, tiny_cascade_dir),
                         init={"decoder": str(tiny_cascade_dir)}, data={"resolution": 32}, output_dir=str(out), steps=3,
                         batch_size=4, learning_rate=1e-3, warmup_steps=1, checkpoint_every=3, sample_every=0, log_every=1)
    return train(config)


def test_prior_and_decoder_train_together_and_the_checkpoint_leaves_out_clip_and_sr(tiny_unclip_dir):
    rows = [json.loads(line) for line in (tiny_unclip_dir.parent / "log.jsonl").read_text().splitlines()]
    assert {"prior/loss", "prior/cosine", "decoder/loss"} <= set(rows[-1])
    with safe_open(str(tiny_unclip_dir / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("prior.") for k in keys) and any(k.startswith("unets.0.class_embedding.") for k in keys)
    # The frozen CLIP and the SR stage live in their own folders, referenced by path and sha256.
    assert not any(k.startswith(("clip.", "unets.1.", "text_encoders.1.")) for k in keys)
    config = json.loads((tiny_unclip_dir / "config.json").read_text())["config"]
    assert len(config["clip_sha256"]) == 64 and len(config["sr_sha256"]) == 64


def test_the_sr_stage_is_the_donor_cascades(tiny_unclip_dir, tiny_cascade_dir):
    model = trilemma.load(tiny_unclip_dir)
    donor = ImagenCascade.from_pretrained(tiny_cascade_dir)
    for (name, a), b in zip(model.unets[1].state_dict().items(), donor.unets[1].state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in model.unets[1].parameters())


def test_generate_is_seeded_and_takes_every_conditioning(tiny_unclip_dir):
    model = trilemma.load(tiny_unclip_dir)
    prompts = ["a red circle", "two blue squares"]
    a = model.generate(prompts, seed=3)
    b = model.generate(prompts, seed=3, batch_size=1)
    assert [im.size for im in a] == [(32, 32)] * 2
    # An image depends on its seed, not its batch (within one rounding level: float sums follow the batch shape).
    assert max(np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() for x, y in zip(a, b)) <= 1
    for conditioning in ("image", "text", "caption"):
        assert len(model.generate(prompts, seed=0, conditioning=conditioning, prior_guidance_scale=2.0)) == 2
    with pytest.raises(ValueError, match="conditioning must be one of"):
        model.generate(prompts, conditioning="pixels")
    with pytest.raises(ValueError, match="prior_candidates"):
        model.generate(prompts, prior_candidates=0)


def test_prior_candidates_keep_the_embedding_nearest_the_text(tiny_unclip_dir):
    model = trilemma.load(tiny_unclip_dir)
    prompts = ["a red circle", "a green triangle above a blue square", "three yellow circles"]
    text = model.clip.encode_text(prompts)[0]
    one = model.prior_sample(prompts, [0, 1, 2], candidates=1)
    four = model.prior_sample(prompts, [0, 1, 2], candidates=4)
    assert torch.allclose(one.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim_one, sim_four = (one * text).sum(-1), (four * text).sum(-1)
    assert (sim_four >= sim_one - 1e-6).all()  # candidate 0 is the single draw; the others can only do better


def test_the_decoder_reads_the_image_embedding(tiny_unclip_dir):
    model = trilemma.load(tiny_unclip_dir)
    red, blue = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 220))
    va, vb = model.vary([red, blue], n=2, seed=0)
    assert len(va) == len(vb) == 2
    # The same seeds, other embeddings: other images (the embedding's extra context tokens reach the U-Net).
    assert np.asarray(va[0]).tolist() != np.asarray(vb[0]).tolist()
    assert np.asarray(va[0]).tolist() != np.asarray(va[1]).tolist()  # and other seeds, other variations


def test_slerp_runs_on_the_sphere_between_its_ends():
    a, b = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    assert torch.allclose(slerp(a[None], b[None], 0.0)[0], a, atol=1e-5)
    assert torch.allclose(slerp(a[None], b[None], 1.0)[0], b, atol=1e-5)
    assert abs(slerp(a[None], b[None], 0.37).norm().item() - 1.0) < 1e-5


def test_a_changed_clip_or_sr_cascade_is_refused(tiny_clip_dir, tiny_cascade_dir):
    with pytest.raises(ValueError, match="differs from the"):
        UnCLIP.from_config(tiny_unclip_config(tiny_clip_dir, tiny_cascade_dir, clip_sha256="0" * 64))
    with pytest.raises(ValueError, match="differ from the"):
        UnCLIP.from_config(tiny_unclip_config(tiny_clip_dir, tiny_cascade_dir, sr_sha256="0" * 64))
    with pytest.raises(ValueError, match="give sr_from"):
        UnCLIP.from_config(tiny_unclip_config(tiny_clip_dir, tiny_cascade_dir, sr_from=None))
    with pytest.raises(ValueError, match="num_train_timesteps"):
        UnCLIP.from_config(tiny_unclip_config(tiny_clip_dir, tiny_cascade_dir, num_train_timesteps=500))
    with pytest.raises(ValueError, match="unet_channels"):
        UnCLIP.from_config(tiny_unclip_config(tiny_clip_dir, tiny_cascade_dir, unet_channels=[[16, 32], [16, 16]]))


def test_cli_vary_and_interpolate_images(tmp_path, tiny_unclip_dir):
    src = tmp_path / "src.png"
    Image.new("RGB", (64, 64), (240, 240, 240)).save(src)
    Image.new("RGB", (64, 64), (20, 200, 20)).save(tmp_path / "b.png")
    code, out, err = run_cli("vary", src, "-n", 3, "--model", tiny_unclip_dir, "--out", tmp_path / "v")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "v" / "metadata.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1, 2] and all((tmp_path / "v" / r["file_name"]).is_file() for r in rows)
    assert (tmp_path / "v" / "grid.png").is_file()
    code, out, err = run_cli("interpolate", "--images", src, tmp_path / "b.png", "--model", tiny_unclip_dir,
                             "--steps", 3, "--out", tmp_path / "i")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["000.png", "001.png", "002.png", "strip.png"]
    # Bad input: one line each, exit 2.
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for args, message in [(("vary", tmp_path / "bad.png", "--model", tiny_unclip_dir), "is not a readable image"),
                          (("vary", tmp_path / "missing.png", "--model", tiny_unclip_dir), "no image at"),
                          (("interpolate", "--model", tiny_unclip_dir), "give two prompts"),
                          (("interpolate", "--images", src, src, "--steps", 100, "--model", tiny_unclip_dir), "between 2 and 64"),
                          (("interpolate", "--images", src, src, "--mode", "z", "--model", tiny_unclip_dir), "are a GAN's")]:
        code, out, err = run_cli(*args, "--out", tmp_path / "x")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_vary_refuses_a_model_without_an_image_embedding(tmp_path, tiny_cascade_dir):
    Image.new("RGB", (32, 32), (240, 240, 240)).save(tmp_path / "a.png")
    code, out, err = run_cli("vary", tmp_path / "a.png", "--model", tiny_cascade_dir, "--out", tmp_path / "v")
    assert code == 2 and "draws no variations" in err
