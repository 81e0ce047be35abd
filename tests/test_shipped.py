"""The shipped default model loads offline and draws 64 px images; the recipes parse."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

import trilemma
from trilemma.registry import DEFAULT_MODEL, model_info, shapes_models, shipped_models
from trilemma.train.loop import TrainConfig

from conftest import assert_same_image

ROOT = Path(__file__).resolve().parents[1]


def test_default_model_is_shipped():
    assert DEFAULT_MODEL in shipped_models()


@pytest.mark.parametrize("name", sorted(shapes_models()))
def test_shipped_model_has_card_and_scores(name):
    folder = shapes_models()[name]
    assert (folder / "README.md").is_file()
    assert (folder / "training_curve.png").is_file()
    info = model_info(folder)
    assert info["size_mb"] < 25  # fp16; the two-U-Net cascade is the largest (22 MB), see its card
    scores = info["scores"]
    # Measured by bench/score_model.py on 500 prompts of each split; the card quotes the same figures.
    assert scores["n_per_split"] >= 500
    card = (folder / "README.md").read_text()
    from trilemma.shapes.scorer import SCORER_VERSION

    assert scores.get("scorer_version") == SCORER_VERSION, "re-score the card with the current scorer"
    for split in ("test", "test-novel"):
        assert 0.0 <= scores[split] <= 1.0  # shapes-dfgan passes none of test-novel
        assert f"**{scores[split]:.3f}**" in card, split


def test_default_model_generates_64px_images_deterministically():
    model = trilemma.load()
    a = model.generate(["a red circle", "three blue squares"], seed=0, steps=5)
    b = model.generate(["a red circle"], seed=0, steps=5)
    assert a[0].size == (64, 64)
    assert_same_image(a[0], b[0])  # batch of 2 and batch of 1
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.json")))
def test_recipes_parse(recipe):
    config = TrainConfig.from_file(ROOT / "configs" / recipe)
    assert config.steps >= 1 and config.model_class


def test_recipe_rejects_unknown_keys(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model_class": "LatentDiffusion", "model": {}, "stepz": 3}))
    with pytest.raises(ValueError, match="unknown key 'stepz'; did you mean 'steps'"):
        TrainConfig.from_file(path)


@pytest.mark.parametrize("name", sorted(set(shipped_models()) - set(shapes_models())))
def test_a_model_of_another_data_set_has_a_card_with_held_out_scores(name):
    folder = shipped_models()[name]
    info = model_info(folder)
    assert info["size_mb"] < 25
    scores = info["scores"]
    held = scores["heldout"]  # measured by `trilemma evaluate --data HELD_OUT`, quoted by the card
    assert held["n"] >= 100 and "features" in held and "training images" in held["references"]
    card = (folder / "README.md").read_text()
    assert f"**{held['fid']:.3f}**" in card and "## Limits" in card and "minutes" in card
    image = trilemma.load(name).generate(["a smiling cat face, an emoji"], seed=0, steps=3)[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize("options, words", [
    ({"seed": 1.5}, "seed must be a whole number"), ({"seed": None}, "seed must be a whole number"),
    ({"seed": 2**64}, "seed must be a whole number"), ({"guidance_scale": float("nan")}, "guidance_scale must be a number"),
    ({"steps": "2"}, "steps must be a whole number"), ({"eta": -1}, "eta must be a number in [0.0, 1.0]"),
    ({"batch_size": 0}, "batch_size must be a whole number"),
])
def test_the_api_checks_generation_options_as_the_cli_does(options, words):
    model = trilemma.load()
    with pytest.raises(ValueError, match=re.escape(words)):
        model.generate(["a red circle"], **options)
    with pytest.raises(TypeError, match="name or a folder"):
        trilemma.load(123)
