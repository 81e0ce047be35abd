"""The shipped unCLIP: it loads offline with the frozen parts it references, draws 64 px images from text, and its
variations keep what the source image shows (the card's scored rates come from bench/unclip.py)."""

import json

import pytest

import trilemma
from trilemma.checkpoint import file_sha256, read_config
from trilemma.registry import WEIGHTS_DIR, shipped_models
from trilemma.shapes.scenes import render, sample_scene
from trilemma.shapes.scorer import detect

pytestmark = pytest.mark.skipif("shapes-unclip" not in shipped_models(), reason="shapes-unclip is not shipped")


def test_references_the_shipped_clip_and_cascade_by_name_and_hash():
    config = json.loads((WEIGHTS_DIR / "shapes-unclip" / "config.json").read_text())["config"]
    assert config["clip"] == "shapes-clip" and config["sr_from"] == "shapes-imagen"
    assert config["clip_sha256"] == file_sha256(WEIGHTS_DIR / "shapes-clip" / "model.safetensors")
    assert config["sr_sha256"] == read_config(WEIGHTS_DIR / "shapes-imagen")["weights_sha256"]


def test_generates_64px_images_from_text():
    images = trilemma.load("shapes-unclip").generate(["a red circle above a blue square"], seed=0, steps=10, sr_steps=5)
    assert images[0].size == (64, 64)


def test_variations_keep_the_sources_colors_and_shapes():
    # A seen pair: the card measures 0.50 of single-object variations passing the source's caption outright
    # (count, size and place may move); the color and shape of what is drawn should stay.
    model = trilemma.load("shapes-unclip")
    scene = next(s for s in (sample_scene("test", i) for i in range(200)) if s.prompt == "a large red circle")
    variations = model.vary([render(scene, 64)], n=4, seed=0)[0]
    kept = sum(any((o.color, o.shape) == ("red", "circle") for o in detect(v)) for v in variations)
    assert kept >= 3, kept
