"""The shipped GALIP: it loads offline with the frozen CLIP and autoencoder it references, draws 64 px images of
what the prompt names, and interpolates (the card's scored rates come from bench/score_model.py)."""

import json

import pytest

import trilemma
from trilemma.checkpoint import file_sha256
from trilemma.registry import WEIGHTS_DIR, shipped_models
from trilemma.shapes.scorer import detect

from conftest import assert_same_image

pytestmark = pytest.mark.skipif("shapes-galip" not in shipped_models(), reason="shapes-galip is not shipped")


def test_references_the_shipped_clip_by_name_and_hash_and_holds_no_clip_weights():
    from safetensors import safe_open

    config = json.loads((WEIGHTS_DIR / "shapes-galip" / "config.json").read_text())["config"]
    assert config["clip"] == "shapes-clip"
    assert config["clip_sha256"] == file_sha256(WEIGHTS_DIR / "shapes-clip" / "model.safetensors")
    with safe_open(str(WEIGHTS_DIR / "shapes-galip" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("clip.") for k in f.keys())


def test_draws_64px_blue_squares_and_red_objects():
    # The card: squares pass, circles come out lumpy (the scorer fails them as circles), colors are right.
    model = trilemma.load("shapes-galip")
    squares = model.generate(["a blue square"] * 8, seed=0)
    assert {im.size for im in squares} == {(64, 64)}
    assert sum(any((o.color, o.shape) == ("blue", "square") for o in detect(im)) for im in squares) >= 6
    circles = model.generate(["a large red circle"] * 8, seed=0)
    assert sum(any(o.color == "red" for o in detect(im)) for im in circles) >= 7


def test_interpolation_strip_ends_at_its_two_prompts():
    model = trilemma.load("shapes-galip")
    strip = model.interpolate("a red circle", "a blue square", steps=4, seed=3)
    assert len(strip) == 4
    assert_same_image(strip[0], model.generate(["a red circle"], seed=3)[0])
    assert_same_image(strip[-1], model.generate(["a blue square"], seed=4)[0])
