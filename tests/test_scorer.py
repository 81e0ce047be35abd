"""The scorer checks exactly what a prompt asks (docs/shapes.md, Scoring)."""

import numpy as np
import pytest
from PIL import Image

from trilemma.shapes.scenes import BACKGROUND, Scene, ShapeObject, render, sample_scene
from trilemma.shapes.scorer import detect, score_image, summarize


@pytest.mark.parametrize("resolution", [64, 128])
@pytest.mark.parametrize("split", ["train", "test", "test-novel"])
def test_ground_truth_renders_pass(split, resolution):
    n = 2000
    failures = []
    for i in range(n):
        scene = sample_scene(split, i)
        verdict = score_image(render(scene, resolution), scene.prompt)
        if not verdict.passed:
            failures.append((i, scene.prompt, verdict.reason))
    assert 1 - len(failures) / n >= 0.995, failures[:5]


def test_blank_and_noise_images_fail():
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for prompt in ["a red circle", "two blue squares", "a red circle and a green square", "a red circle above a blue square"]:
        assert not score_image(blank, prompt).passed
        assert not score_image(noise, prompt).passed


def obj(color, shape, size="large", x=0.1, y=0.1, s=None):
    return ShapeObject(color, shape, size, s or (0.30 if size == "large" else 0.18), x, y)


def verdict(objects, prompt, resolution=64):
    return score_image(render(Scene("single", objects), resolution), prompt)


def test_a_correct_constructed_image_passes():
    assert verdict([obj("red", "circle")], "a red circle").passed
    assert verdict([obj("red", "circle", x=0.1, y=0.4), obj("blue", "square", x=0.6, y=0.4)],
                   "a red circle to the left of a blue square").passed


def test_wrong_color_fails():
    v = verdict([obj("green", "circle")], "a red circle")
    assert not v.passed and "green circle" in v.reason


def test_wrong_shape_fails():
    for shape in ("square", "triangle"):
        v = verdict([obj("red", shape)], "a red circle")
        assert not v.passed and f"red {shape}" in v.reason


def test_extra_object_fails():
    v = verdict([obj("red", "circle"), obj("blue", "square", x=0.6, y=0.6)], "a red circle")
    assert not v.passed and "blue square" in v.reason


def test_wrong_count_fails():
    two = [obj("red", "circle", "small", x=0.1, y=0.1), obj("red", "circle", "small", x=0.6, y=0.1)]
    three = two + [obj("red", "circle", "small", x=0.4, y=0.6)]
    assert verdict(three, "three red circles").passed
    v = verdict(two, "three red circles")
    assert not v.passed and "exactly 3" in v.reason


def test_swapped_relation_fails():
    left = [obj("red", "circle", x=0.1, y=0.4), obj("blue", "square", x=0.6, y=0.4)]
    v = verdict(left, "a red circle to the right of a blue square")
    assert not v.passed and "relation" in v.reason
    assert verdict(left, "a blue square to the right of a red circle").passed
    above = [obj("red", "circle", x=0.4, y=0.1), obj("blue", "square", x=0.4, y=0.6)]
    assert verdict(above, "a red circle above a blue square").passed
    assert not verdict(above, "a red circle below a blue square").passed


def test_wrong_size_fails():
    assert verdict([obj("red", "circle", "small")], "a small red circle").passed
    v = verdict([obj("red", "circle", "small")], "a large red circle")
    assert not v.passed and "size" in v.reason
    pair = [obj("red", "circle", "small", x=0.1, y=0.1), obj("blue", "square", "large", x=0.5, y=0.5)]
    assert verdict(pair, "a small red circle and a large blue square").passed
    assert not verdict(pair, "a large red circle and a blue square").passed


def test_small_images_are_upscaled_before_scoring():
    # A 32 px render can be scored; most pass (docs/shapes.md: small triangles are a few pixels there).
    passed = [score_image(render(s, 32), s.prompt).passed for s in (sample_scene("test", i) for i in range(60))]
    assert sum(passed) >= 0.85 * len(passed)  # measured 0.90-0.94
    with pytest.raises(ValueError, match="square"):
        score_image(np.zeros((64, 48, 3), dtype=np.uint8), "a red circle")
    with pytest.raises(ValueError, match="8-bit"):
        score_image(np.zeros((64, 64, 3), dtype=np.float32), "a red circle")


def test_position_prompts_check_sizes_too():
    scene = [obj("red", "circle", "small", x=0.1, y=0.4), obj("blue", "square", "large", x=0.55, y=0.35)]
    assert verdict(scene, "a small red circle to the left of a large blue square").passed
    v = verdict(scene, "a large red circle to the left of a blue square")
    assert not v.passed and "size" in v.reason


def test_prompts_naming_one_object_twice_are_rejected():
    from trilemma.shapes.scenes import PromptError

    for prompt in ["a red circle and a red circle", "a red circle left of a red circle"]:
        with pytest.raises(PromptError, match="same object twice"):
            score_image(Image.new("RGB", (64, 64), BACKGROUND), prompt)


def test_detects_colors_and_shapes():
    found = detect(render(Scene("pair", [obj("yellow", "triangle"), obj("cyan", "square", x=0.6, y=0.6)]), 128))
    assert sorted((o.color, o.shape) for o in found) == [("cyan", "square"), ("yellow", "triangle")]


def test_summary_per_category_seen_and_novel():
    records = [{"category": "single", "novel": False, "passed": True}, {"category": "count", "novel": True, "passed": False}]
    s = summarize(records)
    assert s["single"]["pass_rate"] == 1.0 and s["count"]["pass_rate"] == 0.0
    assert s["seen"]["pass_rate"] == 1.0 and s["novel"]["pass_rate"] == 0.0
    assert s["overall"] == {"pass_rate": 0.5, "n": 2}
    assert s["pair"]["pass_rate"] is None
    assert s["by_pairs"]["seen"]["single"]["pass_rate"] == 1.0 and s["by_pairs"]["novel"]["count"]["n"] == 1


def hand_drawn(kind: str, s: float, color: str = "red", resolution: int = 64, ss: int = 4) -> Image.Image:
    """One shape of side s pixels, centred, drawn anti-aliased as the renderer draws (4x, box-downsampled)."""
    from PIL import ImageDraw

    from trilemma.shapes.scenes import COLORS

    big = resolution * ss
    image = Image.new("RGB", (big, big), BACKGROUND)
    d, f, S = ImageDraw.Draw(image), COLORS[color], s * ss
    x0 = y0 = (resolution - s) / 2 * ss
    x1, y1, cx, cy = x0 + S, y0 + S, x0 + S / 2, y0 + S / 2
    ring = 3 * ss  # a 3-pixel band
    if kind == "circle":
        d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=f)
    elif kind == "square":
        d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=f)
    elif kind == "rounded square":  # a decoder's softened corners
        d.rounded_rectangle([x0, y0, x1 - 1, y1 - 1], radius=0.15 * S, fill=f)
    elif kind == "triangle":
        d.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), (cx, y0)], fill=f)
    elif kind == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=f)
    elif kind == "downward triangle":
        d.polygon([(x0, y0), (x1, y0), (cx, y1)], fill=f)
    elif kind == "plus":
        d.rectangle([cx - S / 6, y0, cx + S / 6, y1], fill=f)
        d.rectangle([x0, cy - S / 6, x1, cy + S / 6], fill=f)
    elif kind == "half-disc":
        d.pieslice([x0, y0, x1, y1], 180, 360, fill=f)
    elif kind == "ring":
        d.ellipse([x0, y0, x1, y1], fill=f)
        d.ellipse([x0 + ring, y0 + ring, x1 - ring, y1 - ring], fill=BACKGROUND)
    elif kind == "outline":
        d.rectangle([x0, y0, x1, y1], fill=f)
        d.rectangle([x0 + ring, y0 + ring, x1 - ring, y1 - ring], fill=BACKGROUND)
    elif kind == "2:1 bar":
        d.rectangle([x0 - S / 2, y0 + S / 4, x1 + S / 2, y1 - S / 4], fill=f)
    elif kind == "crescent":
        d.ellipse([x0, y0, x1, y1], fill=f)
        d.ellipse([x0 + 0.35 * S, y0 - 0.1 * S, x1 + 0.35 * S, y1 - 0.1 * S], fill=BACKGROUND)
    elif kind == "two merged discs":
        d.ellipse([x0 - 0.4 * S, y0, x1 - 0.4 * S, y1], fill=f)
        d.ellipse([x0 + 0.4 * S, y0, x1 + 0.4 * S, y1], fill=f)
    return image.reduce(ss)


SIZES = [10 + 0.7 * k for k in range(19)]  # 10 to 22.6 pixels at R = 64: small and large objects


@pytest.mark.parametrize("kind", ["diamond", "downward triangle", "plus", "half-disc", "ring", "outline", "2:1 bar",
                                  "crescent", "two merged discs"])
def test_shapes_of_no_ideal_are_unknown_and_fail(kind):
    for s in SIZES:
        found = detect(hand_drawn(kind, s))
        assert [o.shape for o in found] == ["unknown"], (kind, s, found)
    assert not score_image(hand_drawn(kind, 18), "a red circle").passed
    assert not score_image(hand_drawn(kind, 18), "a red square").passed


@pytest.mark.parametrize("kind", ["circle", "square", "triangle"])
def test_ideal_shapes_read_as_drawn_in_every_color_and_size(kind):
    for color in ("red", "green", "blue", "yellow", "purple", "cyan"):
        for s in SIZES:
            assert [o.shape for o in detect(hand_drawn(kind, s, color))] == [kind], (kind, color, s)


def test_a_square_with_softened_corners_is_still_a_square():
    # Corners rounded to 15% of the side, as decoders draw them. A few sizes of red, green and blue miss: their
    # anti-aliased edge lies nearer another palette color (red with the background is nearest yellow), and that
    # one-pixel line, joined to the object, rounds the shape further (measured: 111 of 114).
    reads = [[o.shape for o in detect(hand_drawn("rounded square", s, color))] == ["square"]
             for color in ("red", "green", "blue", "yellow", "purple", "cyan") for s in SIZES]
    assert sum(reads) >= 0.95 * len(reads)


def test_a_count_of_mixed_size_classes_fails():
    mixed = [obj("red", "circle", "small", x=0.1, y=0.1, s=0.17), obj("red", "circle", "large", x=0.5, y=0.5, s=0.32)]
    v = verdict(mixed, "two red circles")
    assert not v.passed and "size class" in v.reason
    same = [obj("red", "circle", "small", x=0.1, y=0.1, s=0.16), obj("red", "circle", "small", x=0.5, y=0.5, s=0.20)]
    assert verdict(same, "two red circles").passed


def test_touching_objects_fail():
    apart = [obj("red", "square", x=0.1, y=0.3, s=0.3), obj("blue", "square", x=0.44, y=0.3, s=0.3)]
    assert verdict(apart, "a red square and a blue square").passed
    touching = [obj("red", "square", x=0.1, y=0.3, s=0.3), obj("blue", "square", x=0.415, y=0.3, s=0.3)]
    v = verdict(touching, "a red square and a blue square")
    assert not v.passed and "touch" in v.reason


def test_an_object_mottled_with_another_color_fails():
    # Purple flecks, each a single pixel (far below the noise floor, so none is an object of its own), in a
    # checkerboard over the middle of a red square: clearly two colors to a person (docs/shapes.md, rule 3).
    image = render(Scene("single", [obj("red", "square", x=0.3, y=0.3, s=0.34)]), 64)
    pixels = np.asarray(image).copy()
    for y in range(23, 41):
        for x in range(23 + y % 2, 41, 2):
            pixels[y, x] = (140, 55, 185)
    assert not score_image(Image.fromarray(pixels), "a red square").passed
    assert score_image(image, "a red square").passed
