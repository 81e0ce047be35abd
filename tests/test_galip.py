"""GALIP: the frozen CLIP read by Mate-D, the bridge feature mapped by the frozen ViT in Mate-G, the CLIP
similarity in the generator's loss, MA-GP on CLIP features, the checkpoint without CLIP, the loop and the CLI,
on a tiny CLIP the tests build themselves."""

import json
import shutil

import numpy as np
import pytest
import torch

import trilemma
from trilemma.gan.galip import GALIP, default_d_layers, default_prompt_layers

from conftest import assert_same_image, run_cli


def tiny_galip(clip_dir, **overrides) -> dict:
    return {"resolution": 64, "z_dim": 8, "ngf": 4, "code_channels": 8, "mid_channels": 4, "mate_g_blocks": 1,
            "affine_hidden": 8, "ndf": 8, "clip": str(clip_dir), **overrides}


def _pixels(n=2):
    return torch.rand(n, 3, 64, 64) * 2 - 1


def test_layer_choices_spread_as_the_codes_over_a_shorter_vit():
    assert default_d_layers(12) == [1, 4, 8]  # the code's choice on ViT-B
    assert default_prompt_layers(12) == list(range(1, 9))
    assert default_d_layers(4) == [0, 1, 2] and default_prompt_layers(4) == [1, 2]
    assert default_d_layers(1) == [0] and default_prompt_layers(1) == [0]


def test_discriminator_reads_the_vits_layers_and_embedding_as_transformers_computes_them(tiny_clip_dir):
    torch.manual_seed(0)
    model = GALIP.from_config(tiny_galip(tiny_clip_dir))
    images = _pixels()
    maps, embedding = model.vit.features(images, [0])
    scorer = model.clip
    out = scorer.model.vision_model(pixel_values=scorer.pixel_values(images), output_hidden_states=True)
    tokens = out.hidden_states[1][:, 1:]  # hidden_states[0] is the input to block 0
    assert maps.shape == (2, 1, 32, 4, 4)
    assert torch.allclose(maps[:, 0].flatten(2).transpose(1, 2), tokens, atol=1e-5)
    features = scorer.model.get_image_features(pixel_values=scorer.pixel_values(images))
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    assert torch.allclose(embedding, features, atol=1e-5)


def test_the_mapper_is_the_frozen_vit_and_its_prompts_change_its_output(tiny_clip_dir):
    torch.manual_seed(0)
    model = GALIP.from_config(tiny_galip(tiny_clip_dir))
    vit, images = model.vit, _pixels()
    # Without prompts, mapping the ViT's own patch embedding is the ViT's last block.
    patches = vit.vision.embeddings.patch_embedding(vit.scorer.pixel_values(images))
    mapped = vit.map(patches, torch.zeros(2, 0, vit.width), [])
    assert torch.allclose(mapped, vit.features(images, [0])[0][:, 0], atol=1e-5)
    prompted = vit.map(patches, torch.randn(2, 1, vit.width), [0])
    assert not torch.allclose(prompted, mapped, atol=1e-3)


def test_losses_train_the_right_player_through_the_frozen_clip(tiny_clip_dir):
    torch.manual_seed(0)
    model = GALIP.from_config(tiny_galip(tiny_clip_dir, hard_mismatch=False)).train()
    opts = model.configure_optimizers(1e-4)
    assert list(opts) == ["discriminator", "generator"]
    assert opts["discriminator"].param_groups[0]["lr"] == pytest.approx(4e-4)
    clip_params = {id(p) for p in model.clip.parameters()}
    assert not clip_params & {id(p) for o in opts.values() for g in o.param_groups for p in g["params"]}
    batch = {"pixel_values": _pixels(4), "text": ["a red circle", "two blue squares", "a green triangle", "a cyan square"]}
    out = model.training_step(batch, "discriminator")
    out["loss"].backward()
    assert {"d_real", "d_fake", "d_mismatch", "ma_gp"} <= set(out)
    assert all(p.grad is None for p in model.generator.parameters())
    assert model.discriminator.joint[0].weight.grad.abs().sum() > 0
    kept = model._pending["maps"]  # the fakes are kept for the generator's step, as the code's loop does
    model.zero_grad()
    out = model.training_step(batch, "generator")
    assert out["loss"].item() == pytest.approx(out["g"].item() - 4.0 * out["clip_sim"].item(), abs=1e-5)
    out["loss"].backward()
    assert model._pending is None and kept.grad_fn is not None
    assert model.generator.fc.weight.grad.abs().sum() > 0  # through the frozen ViT of the D and of the mapper
    assert not any(p.requires_grad for p in model.clip.parameters())
    # The similarity term alone reaches the generator (weight 4 in the paper).
    model.zero_grad()
    fakes = model._fakes(batch)
    torch.nn.functional.cosine_similarity(fakes["embedding"], fakes["sentence"]).mean().backward()
    assert model.generator.to_bridge.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def three_block_clip_dir(tmp_path_factory):
    """A tiny CLIP whose ViT has three blocks, so that Mate-D stacks several and Mate-G prompts some but not all."""
    from trilemma.clip.clip import CLIP, learn_tokenizer
    from trilemma.shapes.dataset import ShapesDataset

    from conftest import TINY_CLIP

    torch.manual_seed(0)
    data = ShapesDataset("train")
    model = CLIP.from_config({**TINY_CLIP, "vision": {**TINY_CLIP["vision"], "num_layers": 3}})
    model.set_tokenizer(learn_tokenizer([data.caption(i, i) for i in range(200)], 600, 32))
    path = tmp_path_factory.mktemp("models") / "clip-3"
    model.save_pretrained(path)
    return path


def test_mate_d_adds_each_chosen_blocks_features_and_ma_gp_is_taken_on_them(three_block_clip_dir, monkeypatch):
    torch.manual_seed(0)
    model = GALIP.from_config(tiny_galip(three_block_clip_dir, d_layers=[2, 0], prompt_layers=[1])).train()
    assert model.config.d_layers == [0, 2] and len(model.discriminator.blocks) == 1
    images = _pixels(3)
    maps, _ = model.vit.features(images, [0, 2])
    out = model.clip.model.vision_model(pixel_values=model.clip.pixel_values(images), output_hidden_states=True)
    assert torch.allclose(maps[:, 1].flatten(2).transpose(1, 2), out.hidden_states[3][:, 1:], atol=1e-5)  # block 2's output
    sentence = model.sentence_embedding(["a red circle"] * 3)
    D = model.discriminator
    before = D.logits(D.features(maps), sentence)
    torch.nn.init.constant_(D.blocks[0].beta, 0.5)  # beta opens the second block's features to Mate-D
    assert not torch.allclose(D.logits(D.features(maps), sentence), before)
    seen = {}
    penalty = model.matching_aware_gradient_penalty

    def spy(real, sent, logits):
        seen["shape"] = tuple(real.shape)
        value = penalty(real, sent, logits)
        gm, gs = torch.autograd.grad(logits.sum(), (real, sent), retain_graph=True)
        assert torch.allclose(value, 2.0 * torch.cat([gm.flatten(1), gs.flatten(1)], 1).norm(dim=1).pow(6).mean())
        return value

    monkeypatch.setattr(model, "matching_aware_gradient_penalty", spy)
    batch = {"pixel_values": images, "text": ["a red circle", "a blue square", "two green circles"]}
    model.training_step(batch, "discriminator")["loss"].backward()
    assert seen["shape"] == (3, 2, 32, 4, 4)  # on the real image's CLIP features, not its pixels


def test_checkpoint_leaves_out_clip_and_a_changed_clip_is_refused(tmp_path, tiny_clip_dir):
    from safetensors import safe_open

    torch.manual_seed(0)
    model = GALIP.from_config(tiny_galip(tiny_clip_dir)).eval()
    model.save_pretrained(tmp_path / "galip")
    with safe_open(str(tmp_path / "galip" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("clip.") for k in keys)
    saved = json.loads((tmp_path / "galip" / "config.json").read_text())["config"]
    assert len(saved["clip_sha256"]) == 64 and saved["d_layers"] == [0] and saved["prompt_layers"] == [0]
    again = trilemma.load(tmp_path / "galip")
    a, b = model.generate(["a red circle"], seed=3)[0], again.generate(["a red circle"], seed=3)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    changed = tmp_path / "other-clip"
    shutil.copytree(tiny_clip_dir, changed)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(changed / "model.safetensors"))
    tensors["logit_scale"] = tensors["logit_scale"] + 1
    save_file(tensors, str(changed / "model.safetensors"))
    saved["clip"] = str(changed)
    with pytest.raises(ValueError, match="differs from the"):
        GALIP.from_config(saved)
    for layers in ([3], [0, 0], []):
        with pytest.raises(ValueError, match="distinct block indices"):
            GALIP.from_config(tiny_galip(tiny_clip_dir, d_layers=layers))


def test_galip_trains_through_the_loop_and_interpolates_from_the_cli(tmp_path, tiny_clip_dir):
    from trilemma.train.loop import TrainConfig, train

    final = train(TrainConfig(model_class="GALIP", model=tiny_galip(tiny_clip_dir, hard_mismatch=True), data={"resolution": 64},
                              batch_size=2, learning_rate=1e-4, warmup_steps=0, sample_every=0, log_every=1,
                              output_dir=str(tmp_path / "run"), steps=2, checkpoint_every=2))
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert {"discriminator/ma_gp", "discriminator/d_mismatch", "generator/g", "generator/clip_sim"} <= set(row)
    model = trilemma.load(final)
    images = model.generate(["a red circle", "two blue squares"], seed=0)
    assert [im.size for im in images] == [(64, 64)] * 2
    assert_same_image(images[1], model.generate(["two blue squares"], seed=1)[0])
    strip = model.interpolate("a red circle", "a blue square", steps=3, seed=5, mode="z")
    assert_same_image(strip[0], model.generate(["a red circle"], seed=5)[0])
    code, out, err = run_cli("interpolate", "a red circle", "a blue square", "--model", final, "--steps", 3,
                             "--out", tmp_path / "strip")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "strip").iterdir()) == ["000.png", "001.png", "002.png", "strip.png"]


def test_latent_galip_trains_through_a_saved_autoencoder_and_leaves_the_frozen_parts_alone(tmp_path, tiny_clip_dir):
    from trilemma.autoencoders.kl import KLAutoencoder
    from trilemma.train.loop import TrainConfig, train

    torch.manual_seed(0)
    ae = {"resolution": 64, "block_out_channels": [8, 8, 8, 8], "latent_channels": 4, "norm_num_groups": 4}
    KLAutoencoder.from_config(ae).save_pretrained(tmp_path / "ae")
    model = GALIP.from_config(tiny_galip(tiny_clip_dir, autoencoder=ae, latent_blocks=1))
    assert model.config.grid == 8
    z, sentence = torch.randn(2, 8), model.sentence_embedding(["a red circle", "a blue square"])
    assert model.generator(z, sentence).shape == (2, 4, 8, 8)
    clip_before = {k: v.clone() for k, v in model.clip.model.state_dict().items()}
    common = dict(model_class="GALIP", data={"resolution": 64}, batch_size=2, learning_rate=1e-3, warmup_steps=0,
                  sample_every=0, log_every=1, steps=2, checkpoint_every=2)
    final = train(TrainConfig(**common, model=tiny_galip(tiny_clip_dir, autoencoder=ae, latent_blocks=1,
                                                         reals_through_autoencoder=True),
                              init={"autoencoder": str(tmp_path / "ae")}, output_dir=str(tmp_path / "run")))
    trained = trilemma.load(final)
    assert trained.config.latent_scale != 1.0  # measured on the training images
    assert [im.size for im in trained.generate(["a red circle"])] == [(64, 64)]
    saved = KLAutoencoder.from_pretrained(tmp_path / "ae").state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in trained.autoencoder.state_dict().items())
    assert all(torch.equal(v, clip_before[k]) for k, v in trained.clip.model.state_dict().items())
    with pytest.raises(ValueError, match="init.autoencoder"):  # a random decoder would feed CLIP noise
        train(TrainConfig(**common, model=tiny_galip(tiny_clip_dir, autoencoder=ae), output_dir=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="patch grid"):
        GALIP.from_config(tiny_galip(tiny_clip_dir, autoencoder={**ae, "block_out_channels": [8] * 6}))  # a 2x2 latent
