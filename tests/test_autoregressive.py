"""The autoregressive family: VQ tokenizer (VQ-VAE / VQGAN) and the text-and-image-token transformer."""

import json

import numpy as np
import pytest
import torch

import trilemma
from trilemma.autoregressive.dalle import DalleTransformer
from trilemma.autoencoders.vq import Codebook, VQTokenizer

from conftest import assert_same_image

TINY_VQ = {"resolution": 32, "block_out_channels": [16, 16, 32], "norm_num_groups": 8, "latent_channels": 16,
           "codebook_size": 32, "codebook_dim": 8}
TINY_DALLE = {"vq": TINY_VQ, "n_layer": 1, "n_embd": 32, "n_head": 2}


def test_ema_codebook_moves_to_the_data_and_restarts_dead_codes():
    torch.manual_seed(0)
    book = Codebook(8, 2, ema=True, decay=0.5, beta=0.25, dead_threshold=0.5).train()
    centers = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [3.0, -3.0], [-3.0, -3.0]])
    for _ in range(30):
        z = (centers[torch.randint(0, 4, (64,))] + 0.05 * torch.randn(64, 2)).view(64, 2, 1, 1)
        q, idx, loss, stats = book(z)
    # Every data cluster has a code on it (restarts pulled the unused random codes onto the data) ...
    nearest = torch.cdist(centers, book.embedding).min(1).values
    assert (nearest < 0.2).all(), nearest
    # ... and the straight-through output equals the code vectors in value (read before this step's update).
    book.eval()
    q, idx, _, _ = book(z)
    assert torch.allclose(q.view(64, 2), book.embedding[idx.view(64)])
    assert 3.5 < stats["perplexity"] <= 8


def test_vq_tokens_round_trip_and_reconstruction_trains(tmp_path):
    torch.manual_seed(0)
    vq = VQTokenizer.from_config(TINY_VQ)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    tokens = vq.encode(x)
    assert tokens.shape == (4, 8, 8) and tokens.max() < 32
    assert vq.decode(tokens).shape == (4, 3, 32, 32)
    opt = vq.configure_optimizers(1e-3)["autoencoder"]
    first = None
    for _ in range(15):
        out = vq.training_step({"pixel_values": x}, "autoencoder")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["l1"])
    assert float(out["l1"]) < first
    vq.save_pretrained(tmp_path / "vq")
    again = trilemma.load(tmp_path / "vq")
    assert torch.equal(again.encode(x), vq.eval().encode(x))


def test_vqgan_adds_the_adversarial_term_after_warm_up():
    torch.manual_seed(0)
    vq = VQTokenizer.from_config({**TINY_VQ, "gan": True, "disc_start": 1})
    assert list(vq.configure_optimizers(1e-4)) == ["autoencoder", "discriminator"]
    batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1}
    first = vq.training_step(batch, "autoencoder")
    assert "g_loss" not in first  # warm-up: reconstruction only
    second = vq.training_step(batch, "autoencoder")
    assert "g_loss" in second and float(second["gan_weight"]) > 0
    d = vq.training_step(batch, "discriminator")
    assert torch.isfinite(d["loss"]) and d["loss"].requires_grad


def test_transformer_learns_image_tokens_and_samples_deterministically(tmp_path):
    torch.manual_seed(0)
    model = DalleTransformer.from_config(TINY_DALLE)
    tokens = torch.randint(0, 32, (4, 8, 8))
    batch = {"image_tokens": tokens, "text": ["a red circle"] * 4}
    opt = model.configure_optimizers(3e-3)["model"]
    losses = []
    for _ in range(20):
        out = model.training_step(batch, "model")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] - 0.3
    assert not any(p.requires_grad for p in model.vq.parameters())
    model.eval()
    prompts = ["a red circle", "three blue squares"]
    a = model.generate(prompts, seed=3)
    b = model.generate(prompts[1:], seed=4, batch_size=1)
    assert a[0].size == (32, 32)
    assert_same_image(a[1], b[0])  # image i depends on seed + i, not on its batch
    model.save_pretrained(tmp_path / "m")
    again = trilemma.load(tmp_path / "m")
    assert np.array_equal(np.asarray(again.generate(prompts, seed=3)[0]), np.asarray(a[0]))


def test_kv_cache_gives_the_same_tokens_as_recomputing():
    torch.manual_seed(0)
    model = DalleTransformer.from_config(TINY_DALLE).eval()
    options = dict(guidance_scale=3.0, temperature=1.0, top_k=8, top_p=0.9)
    cached = model.sample_tokens(["a red circle", "two green squares"], [1, 2], use_cache=True, **options)
    full = model.sample_tokens(["a red circle", "two green squares"], [1, 2], use_cache=False, **options)
    assert torch.equal(cached, full)
    top1 = model.sample_tokens(["a red circle"], [1], guidance_scale=1.0, temperature=1.0, top_k=1, top_p=None)
    greedy = model.sample_tokens(["a red circle"], [9], guidance_scale=1.0, temperature=1.0, top_k=1, top_p=None)
    assert torch.equal(top1, greedy)  # top-k 1 is greedy: the seed no longer matters


def test_reranking_keeps_the_best_candidate_per_prompt():
    torch.manual_seed(0)
    model = DalleTransformer.from_config(TINY_DALLE).eval()
    brightness = lambda images, prompts: [np.asarray(im).mean() for im in images]  # noqa: E731
    single = model.generate(["a red circle"] * 3, seed=0)
    best = model.generate(["a red circle"] * 3, seed=0, candidates=4, reranker=brightness)
    assert all(np.asarray(b).mean() >= np.asarray(s).mean() for b, s in zip(best, single))
    with pytest.raises(ValueError, match="reranker"):
        model.generate(["a red circle"], candidates=2)


def test_transformer_trains_through_the_one_loop(tmp_path):
    from trilemma.train.loop import TrainConfig, train

    torch.manual_seed(0)
    VQTokenizer.from_config(TINY_VQ).save_pretrained(tmp_path / "vq")
    config = TrainConfig(model_class="DalleTransformer", model=TINY_DALLE, init={"vq": str(tmp_path / "vq")},
                         data={"cache_tokens": 16}, output_dir=str(tmp_path / "run"), steps=2, batch_size=2,
                         learning_rate=1e-3, warmup_steps=1, checkpoint_every=2, sample_every=0, log_every=1)
    final = train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "bits_per_token" in rows[-1]
    assert trilemma.load(final).generate(["a red circle"], seed=0)[0].size == (32, 32)


def test_recipe_may_leave_the_tokenizer_to_init(tmp_path):
    # configs/shapes-dalle.json names no "vq" config: the tokenizer comes from init.vq alone.
    from trilemma.train.loop import TrainConfig, train

    torch.manual_seed(0)
    vq = dict(TINY_VQ, block_out_channels=[8, 8, 8], codebook_size=512)  # the default token grid (8x8) and codebook
    VQTokenizer.from_config(vq).save_pretrained(tmp_path / "vq")
    model = {k: v for k, v in TINY_DALLE.items() if k != "vq"}
    config = TrainConfig(model_class="DalleTransformer", model=model, init={"vq": str(tmp_path / "vq")},
                         data={"cache_tokens": 4}, output_dir=str(tmp_path / "run"), steps=1, batch_size=2,
                         learning_rate=1e-3, warmup_steps=1, checkpoint_every=1, sample_every=0, log_every=1)
    loaded = trilemma.load(train(config))
    assert loaded.vq.config.block_out_channels == (8, 8, 8)
    assert loaded.generate(["a red circle"], seed=0)[0].size == (32, 32)
