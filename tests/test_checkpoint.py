"""One checkpoint format: a folder rebuilds its own model; writes are atomic; damage is reported clearly."""

import json

import pytest
import torch

import trilemma
from trilemma.checkpoint import CheckpointError, load_checkpoint, replace_extra_file, save_checkpoint
from trilemma.diffusion.latent_diffusion import LatentDiffusion
from trilemma.model import TrainableModel

from conftest import TINY_LDM


def test_a_folder_rebuilds_its_model_with_no_other_code(tiny_ldm_dir):
    config = json.loads((tiny_ldm_dir / "config.json").read_text())
    assert config["family"] == "diffusion" and config["model_class"] == "LatentDiffusion"
    assert "vocab" in config["config"]["tokenizer"] and config["config"]["unet_channels"] == [16, 32]
    model = trilemma.load(tiny_ldm_dir)
    assert isinstance(model, LatentDiffusion)
    _, tensors = load_checkpoint(tiny_ldm_dir)
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name].float()), name


def test_no_pickle_files_in_a_checkpoint(tiny_ldm_dir):
    assert sorted(p.name for p in tiny_ldm_dir.iterdir()) == ["config.json", "model.safetensors"]


def test_fp16_save_loads_back_in_full_precision(tiny_ldm_dir, tmp_path):
    model = trilemma.load(tiny_ldm_dir)
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    half = TrainableModel.from_pretrained(tmp_path / "half")
    assert next(half.parameters()).dtype == torch.float32
    a, b = model.unet.conv_in.weight, half.unet.conv_in.weight
    assert torch.allclose(a, b, atol=1e-2)


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import trilemma.checkpoint as ck

    target = tmp_path / "ckpt"
    save_checkpoint(target, {"family": "x", "model_class": "Y", "v": 1}, {"w": torch.ones(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck, "write_json", crash)  # dies after the weights, before the config
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(target, {"family": "x", "model_class": "Y", "v": 2}, {"w": torch.zeros(3)})
    config, tensors = load_checkpoint(target)
    assert config["v"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folder left behind


def test_a_crash_between_the_renames_is_recovered(tmp_path):
    target = tmp_path / "ckpt"
    save_checkpoint(target, {"family": "x", "model_class": "Y"}, {"w": torch.ones(3)})
    target.rename(tmp_path / "ckpt.old")  # the state after the first rename, before the second
    _, tensors = load_checkpoint(target)
    assert torch.equal(tensors["w"], torch.ones(3))


def test_missing_and_corrupted_files_raise_clear_errors(tiny_ldm_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_ldm_dir, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        trilemma.load(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        trilemma.load(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        trilemma.load(broken)
    with pytest.raises(CheckpointError, match="unknown model"):
        trilemma.load(tmp_path / "nowhere")


def test_every_sampler_is_seeded_per_image(tiny_ldm_dir):
    import numpy as np

    model = trilemma.load(tiny_ldm_dir)
    for sampler in ("ddpm", "ddim", "dpmsolver++"):
        both = model.generate(["a red circle", "two blue squares"], seed=5, steps=3, sampler=sampler)
        again = model.generate(["a red circle", "two blue squares"], seed=5, steps=3, sampler=sampler)
        alone = model.generate(["two blue squares"], seed=6, steps=3, sampler=sampler)
        assert [im.tobytes() for im in both] == [im.tobytes() for im in again], sampler
        # Same noise whatever the batch; only float rounding (BLAS blocking) may differ by a level.
        diff = np.abs(np.asarray(both[1], dtype=int) - np.asarray(alone[0], dtype=int))
        assert diff.max() <= 2, (sampler, diff.max())


def test_extra_files_are_verified_too(tmp_path):
    save_checkpoint(tmp_path / "c", {"family": "x", "model_class": "Y"}, {"w": torch.ones(1)}, {"state.json": {"step": 3}})
    (tmp_path / "c" / "state.json").write_text('{"step": 4}')
    with pytest.raises(CheckpointError, match="state.json is corrupted"):
        load_checkpoint(tmp_path / "c")


def test_an_extra_file_is_replaced_with_its_hash_and_the_weights_kept(tmp_path):
    save_checkpoint(tmp_path / "c", {"family": "x", "model_class": "Y"}, {"w": torch.ones(2)}, {"scores.json": {"test": 0.5}})
    replace_extra_file(tmp_path / "c", "scores.json", {"test": 0.4})
    config, tensors = load_checkpoint(tmp_path / "c")  # verifies every recorded sha256
    assert json.loads((tmp_path / "c" / "scores.json").read_text()) == {"test": 0.4}
    assert torch.equal(tensors["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="no other.json"):
        replace_extra_file(tmp_path / "c", "other.json", {})


def test_t5_encoder_and_coord_channels_round_trip(tmp_path):
    config = {**TINY_LDM, "text_encoder": {**TINY_LDM["text_encoder"], "architecture": "t5"}, "coord_channels": True}
    torch.manual_seed(0)
    model = LatentDiffusion.from_config(config)
    assert model.unet.config.in_channels == model.latent_channels + 2
    model.save_pretrained(tmp_path / "m")
    again = trilemma.load(tmp_path / "m")
    assert again.config.coord_channels and again.text_encoder.config.architecture == "t5"
    a = model.generate(["a red circle above a blue square"], seed=3)[0]
    b = again.generate(["a red circle above a blue square"], seed=3)[0]
    assert a.size == (64, 64) and a.tobytes() == b.tobytes()
