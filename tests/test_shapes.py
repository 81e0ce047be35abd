"""The Shapes data set follows docs/shapes.md: geometry, splits, category mix, captions, determinism."""

from collections import Counter

import numpy as np
import pytest

from trilemma.shapes.dataset import ShapesDataset
from trilemma.shapes.scenes import (
    BACKGROUND, GAP, HELD_OUT_PAIRS, MARGIN, RELATION_MARGIN, SIZE_RANGES, PromptError, normalize_prompt,
    parse_prompt, relation_holds, render, sample_scene,
)


def test_same_split_index_seed_gives_same_bytes():
    a = render(sample_scene("test", 17, seed=3), 64).tobytes()
    b = render(sample_scene("test", 17, seed=3), 64).tobytes()
    assert a == b
    assert a != render(sample_scene("test", 17, seed=4), 64).tobytes()
    assert a != render(sample_scene("train", 17, seed=3), 64).tobytes()


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_renders_at_any_resolution_on_the_background(resolution):
    image = render(sample_scene("train", 0), resolution)
    assert image.size == (resolution, resolution)
    assert image.getpixel((0, 0)) == BACKGROUND


def test_geometry_sizes_gaps_and_margins():
    for i in range(500):
        scene = sample_scene("train", i)
        for o in scene.objects:
            lo, hi = SIZE_RANGES[o.size]
            assert lo <= o.s <= hi
            assert o.x >= MARGIN - 1e-9 and o.x + o.s <= 1 - MARGIN + 1e-9
            assert o.y >= MARGIN - 1e-9 and o.y + o.s <= 1 - MARGIN + 1e-9
        for a in scene.objects:
            for b in scene.objects:
                if a is not b:
                    apart = (a.x >= b.x + b.s + GAP or b.x >= a.x + a.s + GAP or a.y >= b.y + b.s + GAP or b.y >= a.y + a.s + GAP)
                    assert apart, f"scene {i}: boxes closer than the gap"


def test_category_templates():
    for i in range(400):
        s = sample_scene("train", i)
        if s.category == "count":
            assert 2 <= len(s.objects) <= 4
            assert len({(o.color, o.shape, o.size) for o in s.objects}) == 1
        elif s.category in ("pair", "position"):
            a, b = s.objects
            assert (a.color, a.shape) != (b.color, b.shape)
        if s.category == "position":
            assert relation_holds(s.objects[0], s.objects[1], s.relation, RELATION_MARGIN)


def test_train_and_test_never_hold_a_held_out_pair_and_novel_always_does():
    for split in ("train", "test"):
        for i in range(1000):
            assert not sample_scene(split, i).novel
    for i in range(1000):
        assert sample_scene("test-novel", i).novel


@pytest.mark.parametrize("split", ["train", "test", "test-novel"])
def test_category_mix(split):
    n = 4000
    counts = Counter(sample_scene(split, i).category for i in range(n))
    for category, share in {"single": 0.2, "pair": 0.3, "count": 0.2, "position": 0.3}.items():
        assert abs(counts[category] / n - share) < 0.03, counts


def _meaning(parsed):
    objs = sorted((o.color, o.shape) for o in parsed.objects)
    if parsed.category != "position":
        return parsed.category, tuple(objs)
    a, b = parsed.objects
    rel = parsed.relation
    if rel in ("right", "below"):  # "B right of A" says "A left of B"
        a, b, rel = b, a, {"right": "left", "below": "above"}[rel]
    return "position", ((a.color, a.shape), rel, (b.color, b.shape))


def test_training_captions_vary_but_keep_the_meaning():
    wordings = set()
    for i in range(300):
        scene = sample_scene("train", i)
        for k in range(4):
            caption = scene.caption(np.random.default_rng([i, k]))
            wordings.add(caption)
            assert _meaning(parse_prompt(caption)) == _meaning(parse_prompt(scene.prompt)), caption
    text = " ".join(wordings)
    for word in (" one ", " left of ", " on top of ", " beneath ", " under ", "3 "):
        assert word in text, word


def test_held_out_pairs_never_in_training_captions():
    data = ShapesDataset("train")
    for i in range(500):
        text = data[i]["text"]
        for color, shape in HELD_OUT_PAIRS:
            assert f"{color} {shape}" not in text


def test_parser_accepts_every_wording_and_rejects_others():
    assert parse_prompt("Two red circles.").category == "count"
    assert parse_prompt("4 cyan triangles").objects[0].shape == "triangle"
    assert parse_prompt("a small red circle and a large blue square").objects[1].size == "large"
    assert parse_prompt("one red circle beneath a blue square").relation == "below"
    assert parse_prompt("a red circle on top of a blue square").relation == "above"
    assert parse_prompt("a red circle left of a blue square").relation == "left"
    assert normalize_prompt("  A  red circle ") == "a red circle"
    for bad in ["a dog", "five red circles", "a red circle near a blue square", "", "a pink circle"]:
        with pytest.raises(PromptError, match="outside the Shapes grammar"):
            parse_prompt(bad)


def test_dataset_tensors():
    item = ShapesDataset("test", resolution=32, paraphrase=False)[5]
    x = item["pixel_values"]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert item["text"] == sample_scene("test", 5).prompt
