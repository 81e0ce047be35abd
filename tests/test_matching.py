"""The DAMSM-style sentence encoder: hard negatives that really contradict, training through the loop."""

import numpy as np
import pytest
import torch

import trilemma
from trilemma.shapes.scenes import parse_prompt, sample_scene
from trilemma.shapes.negatives import hard_negative
from trilemma.eval.hard_negatives import hard_negative_accuracy
from trilemma.text.matching import SentenceMatching

TINY_AE = {"resolution": 32, "block_out_channels": [8, 8, 8], "latent_channels": 4, "norm_num_groups": 4}
TINY = {"resolution": 32, "autoencoder": TINY_AE, "image_channels": 16, "embed_dim": 8,
        "text_encoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "architecture": "t5"}}


@pytest.mark.parametrize("category", ["single", "pair", "count", "position"])
def test_hard_negative_contradicts_its_scene(category):
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(40):
        scene = sample_scene("train", i, category=category)
        neg = hard_negative(scene, rng)
        a, b = parse_prompt(scene.prompt), parse_prompt(neg.prompt)
        # What the caption asks differs: objects as a multiset, or the relation between them.
        key = lambda p: (sorted((o.color, o.shape) for o in p.objects), p.relation)  # noqa: E731
        assert key(a) != key(b), (scene.prompt, neg.prompt)
        changed += a.relation is not None and b.relation != a.relation
        assert neg.objects is not scene.objects and scene.prompt == sample_scene("train", i, category=category).prompt
    assert (changed > 5) == (category == "position")  # relation flips happen, and only for relations


def test_matching_trains_through_the_loop_and_hands_its_encoder_to_the_gan(tmp_path):
    from trilemma.autoencoders.kl import KLAutoencoder
    from trilemma.train.loop import TrainConfig, train

    torch.manual_seed(0)
    KLAutoencoder.from_config(TINY_AE).save_pretrained(tmp_path / "ae")
    final = train(TrainConfig(model_class="SentenceMatching", model=TINY, init={"autoencoder": str(tmp_path / "ae")},
                              data={"resolution": 32, "cache_latents": 8}, batch_size=4, learning_rate=1e-3, steps=2,
                              checkpoint_every=2, sample_every=0, ema_decay=0, log_every=1, output_dir=str(tmp_path / "m")))
    log = (tmp_path / "m" / "log.jsonl").read_text().splitlines()[-1]
    assert '"beats_hard_negative"' in log and '"retrieval"' in log
    model = trilemma.load(final)
    acc = hard_negative_accuracy(model, "test", n=20)
    assert set(acc) >= {"single", "overall"} and 0.0 <= acc["overall"] <= 1.0
    # DF-GAN takes the trained text encoder as its frozen one.
    gan = train(TrainConfig(model_class="DFGAN", model={"resolution": 32, "z_dim": 8, "ngf": 4, "ndf": 4, "affine_hidden": 8,
                                                        "text_encoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2}},
                            init={"text_encoder": str(final)}, data={"resolution": 32}, batch_size=2, learning_rate=1e-4,
                            steps=1, sample_every=0, output_dir=str(tmp_path / "gan")))
    gan_model = trilemma.load(gan)
    assert gan_model.text_encoder.config.architecture == "t5"
    assert torch.allclose(gan_model.sentence_embedding(["a red circle"]), model.sentence(["a red circle"]), atol=1e-5)
