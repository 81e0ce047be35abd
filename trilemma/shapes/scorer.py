"""The Shapes scorer: an exact check of what a prompt asked for (docs/shapes.md, Scoring).

No learned detector: the scene's vocabulary is known, so each pixel is
classified to the nearest palette color, same-color pixels are grouped into
4-connected components, and each component's shape is read off its geometry.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from trilemma.shapes.scenes import BACKGROUND, COLORS, SHAPES, SIZE_RANGES, ParsedPrompt, parse_prompt, relation_holds

_NAMES = ("background",) + tuple(COLORS)
_PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)  # (7, 3)
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
SIZE_TOLERANCE = 0.04
LARGE_OVER_SMALL = 1.3
MIN_RESOLUTION = 64
MAX_ASPECT = 1.25  # a box's long side over its short side, beyond which no shape of the spec fits it
# The thresholds below were set on renders and on the labelled generated images of tests/fixtures/labelled
# (docs/shapes.md), at the benchmark's 64 px; pixel sizes are pixels of a 64 px image.
# Mean distance, in pixels, between an object's edge and its nearest ideal shape's (shape_errors), above which
# it is no shape of the spec, for objects of at least SMALL_BELOW pixels (square root of the area). Renders reach
# 0.30 (a binarised anti-aliased edge). A square may stray further: people forgive its softened corners, while a
# circle has no corner to soften and its deviations read as lumps.
MAX_SHAPE_ERROR = {"circle": 0.4, "square": 0.55, "triangle": 0.4}
SMALL_BELOW = 13
MAX_SMALL_SHAPE_ERROR = 0.7  # smaller objects: a pixel of blur is a larger share of them
AMBIGUITY = 0.7  # circle and square errors this close: a rounded square that is neither (objects >= AMBIGUOUS_ABOVE)
AMBIGUOUS_ABOVE = 15
MAX_CONCAVITY = 0.45  # mean dent depth, pixels (concavity)
TOUCH_GAP = 2.05 / 64  # fraction of the side: one background pixel between two objects at 64 px
MIN_COLOR_PURITY = 0.7  # share of an object's interior in its own color
# Box fill, around the ideal 0.79 / 1 / 0.5: a small diamond is near the ideal circle but fills half its box.
FILL_RANGES = {"circle": (0.64, 0.95), "square": (0.8, 1.0), "triangle": (0.42, 0.76)}
# Bumped whenever a verdict can change, so cached pass rates (reports, ablation cells) know to re-score.
SCORER_VERSION = 2


@dataclass
class DetectedObject:
    color: str
    shape: str
    side: float  # bounding-box side (the larger of width and height), fraction of the image side
    cx: float
    cy: float
    area: int
    fill: float  # share of the bounding box the component covers
    touches: bool = False  # meets another object (objects never touch in a scene)


@dataclass
class Verdict:
    passed: bool
    reason: str
    objects: list[DetectedObject]


def _to_array(image: Image.Image | np.ndarray) -> tuple[np.ndarray, int]:
    """The image as (R, R, 3) uint8 at R >= 64, and the factor it was upscaled by."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square RGB image of shape (R, R, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels (uint8, 0..255), got {image.dtype}")
    side = image.shape[0]
    factor = 1
    if side < MIN_RESOLUTION:  # docs/shapes.md: upscale small images (nearest) to >= 64 first
        factor = math.ceil(MIN_RESOLUTION / side)
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    return image, factor


_SUPERSAMPLE = 4
_PAD = 2  # pixels around a component's box where the fitted ideal may reach


def ideal_coverage(shape: str, width: float, height: float, cx: float, cy: float, h: int, w: int) -> np.ndarray:
    """Each pixel's covered share of an ideal `shape` on a width x height box centred at (cx, cy), on an h x w grid.

    The shapes of docs/shapes.md by their bounding box: circle, the disc (ellipse) inscribed in it; square,
    the box; triangle, apex at the top centre, base along the bottom edge. Sampled 4 x 4 per pixel.
    """
    ys = (np.arange(h * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    xs = (np.arange(w * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    y, x = np.meshgrid((ys - cy) / height + 0.5, (xs - cx) / width + 0.5, indexing="ij")  # box coordinates
    in_box = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    if shape == "circle":
        inside = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    elif shape == "square":
        inside = in_box
    else:
        inside = in_box & (np.abs(x - 0.5) <= 0.5 * y)
    return inside.reshape(h, _SUPERSAMPLE, w, _SUPERSAMPLE).mean(axis=(1, 3))


# Area of each ideal shape over its box side squared, and where its centroid sits in its box (from the top).
_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
_PERIMETER = {"circle": np.pi, "square": 4.0, "triangle": 1 + np.sqrt(5)}
_CENTROID_Y = {"circle": 0.5, "square": 0.5, "triangle": 2 / 3}


def shape_errors(box: np.ndarray) -> dict[str, float]:
    """How far a component (its mask cropped to its bounding box) is from each ideal shape fitted to it.

    Each ideal takes the proportions of the component's box (a generated circle is often a little
    elliptical, and a person still calls it a circle), and is fitted at sub-pixel precision to the
    component's area and centroid (a box read off the
    extreme pixels is a pixel short whenever an edge row is less than half covered, which at 10 pixels
    is a tenth of the side). The error is the area between the component and the ideal (the sum of
    |mask - coverage|) over the ideal's perimeter: the mean distance between the two edges, in pixels,
    whatever the object's size. A binarised anti-aliased render of the right shape sits at 0.2-0.3;
    the wrong ideal, or a shape of no ideal (a diamond, a crescent, a ring), is further off.
    """
    aspect = box.shape[1] / box.shape[0]  # the box's own proportions (classify_shape bounds them)
    padded = np.pad(box, _PAD)
    h, w = padded.shape
    ys, xs = np.nonzero(padded)
    area, my, mx = len(ys), ys.mean() + 0.5, xs.mean() + 0.5
    errors = {}
    for shape in SHAPES:
        size = np.sqrt(area / _AREA[shape])
        width, height = size * np.sqrt(aspect), size / np.sqrt(aspect)
        cover = ideal_coverage(shape, width, height, mx, my + (0.5 - _CENTROID_Y[shape]) * height, h, w)
        errors[shape] = float(np.abs(padded - cover).sum() / (_PERIMETER[shape] * size))
    return errors


def concavity(box: np.ndarray) -> float:
    """How far a component falls short of its convex hull: the area between them over the hull's perimeter,
    that is the mean depth of its dents, in pixels. Every shape of the spec is convex; a triangle whose sides
    a decoder drew concave (pinched, star-like) or a dented blob is not, though its mean edge distance from
    the ideal can stay small. The hull is taken over pixel centres and its area in pixels is read with Pick's
    theorem (lattice points = area + boundary points / 2 + 1), counting the hull's perimeter as if every unit
    of it held a lattice point: exact for axis-aligned edges (a square's dents read 0), an overestimate along
    slanted ones, so that a convex pixelated disc or triangle reads about 0.15 px, inside MAX_CONCAVITY."""
    points = np.argwhere(box)
    if len(points) < 3 or np.linalg.matrix_rank(points - points[0]) < 2:
        return 0.0
    hull = ConvexHull(points)
    return float(max(0.0, hull.volume + hull.area / 2 + 1 - len(points)) / hull.area)


def classify_shape(mask: np.ndarray, pixel: int = 1) -> tuple[str, float]:
    """Circle, square, triangle or unknown, as the spec defines shapes: by their bounding box.

    Returns the shape and the fill (share of the box covered). In order, an object is `unknown` when: its
    box is far from square (every shape's box is square: two objects merged into one blob, a bar, a
    half-disc); it is dented (`concavity`: a pinched triangle, a dented blob); it is near none of the ideal
    circle, square and upward triangle fitted to it (`shape_errors`: a ring, an outline, a crescent, a cross,
    a downward triangle); it fills its box unlike the nearest ideal (a diamond, near the circle at 10
    pixels); or it is a large rounded square as near the circle as the square. `pixel` is the factor an
    image was upscaled by: errors are measured in the image's own pixels.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("classify_shape needs a mask with at least one pixel")
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = box.shape
    fill = float(box.mean())
    if max(h, w) > MAX_ASPECT * min(h, w) + pixel:  # a pixel of slack for anti-aliased edges
        return "unknown", fill
    # Edge errors in the image's own pixels: an image upscaled from 32 px has edges in steps of 2.
    if concavity(box) / pixel > MAX_CONCAVITY:
        return "unknown", fill
    errors = {k: v / pixel for k, v in shape_errors(box).items()}
    shape = min(errors, key=errors.get)
    size = math.sqrt(box.sum()) / pixel
    if errors[shape] > (MAX_SHAPE_ERROR[shape] if size >= SMALL_BELOW else MAX_SMALL_SHAPE_ERROR):
        return "unknown", fill
    # Box fill, as the spec's ideal shapes give it (0.79, 1.0, 0.5), within what renders and generated images
    # a person passes reach: a diamond is near the ideal circle at 10 pixels but fills half its box.
    low, high = FILL_RANGES[shape]
    if not low <= fill <= high:
        return "unknown", fill
    # A rounded square that is as near the ideal circle as the ideal square is neither. Below about 15 pixels
    # the two ideals differ by too few pixels for the errors to tell (a small disc's corners are a pixel or
    # two), so only larger objects are held to it.
    if shape in ("circle", "square") and size >= AMBIGUOUS_ABOVE:
        if errors[shape] > AMBIGUITY * errors["square" if shape == "circle" else "circle"]:
            return "unknown", fill
    return shape, fill


def detect(image: Image.Image | np.ndarray) -> list[DetectedObject]:
    """Objects in an image: (color, shape, box side, centre) per component."""
    pixels, factor = _to_array(image)
    pixels = pixels.astype(np.float32)
    side = pixels.shape[0]
    dist = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    # Noise floor: 25% of the area of the smallest small circle at this resolution.
    min_area = 0.25 * math.pi * (SIZE_RANGES["small"][0] * side / 2) ** 2
    kept = []
    for k in range(1, len(_NAMES)):
        components, n = ndimage.label(labels == k, structure=_FOUR_CONNECTED)
        if n == 0:
            continue
        areas = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, n + 1))
        for j, area in enumerate(areas, start=1):
            if area < min_area:
                continue
            mask = components == j
            # Anti-aliasing leaves 1-pixel fringes where a shape meets the background, and a
            # blend of blue and background lies nearer cyan or purple than either: along a
            # straight edge such a fringe passes the area floor. An object has an interior
            # that survives one erosion; a fringe does not.
            if ndimage.binary_erosion(mask, structure=_FOUR_CONNECTED).sum() < 0.25 * min_area:
                continue
            kept.append((k, mask))
    # What is left of the foreground (fringes, specks, a patch where a generated color drifts towards a
    # neighbour: a green triangle shading to teal at one corner) is no object of its own; where it touches
    # an object it is part of that object's outline, as a person sees it, so the shape is read with it.
    loose = labels > 0
    for _, mask in kept:
        loose &= ~mask
    objects, masks = [], []
    for k, mask in kept:
        if loose.any():
            region, _ = ndimage.label(mask | loose, structure=_FOUR_CONNECTED)
            mask = np.isin(region, np.unique(region[mask]))
        masks.append(mask)
        ys, xs = np.nonzero(mask)
        shape, fill = classify_shape(mask, factor)
        interior = ndimage.binary_erosion(mask, structure=_FOUR_CONNECTED)
        if interior.any() and (labels[interior] == k).mean() < MIN_COLOR_PURITY:
            shape = "unknown"  # clearly two colors: a patch of a neighbouring color inside the object
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        objects.append(DetectedObject(
            color=_NAMES[k], shape=shape, side=max(x1 - x0, y1 - y0) / side,
            cx=(x0 + x1) / 2 / side, cy=(y0 + y1) / 2 / side, area=int(mask.sum()), fill=float(fill),
        ))
    # Objects never touch (their boxes keep a gap of 0.04 of the side, and renders keep 3 pixels between
    # pixels at R = 64): two whose pixels come within TOUCH_GAP of each other (one background pixel between
    # them at R = 64) read as touching, one merged blob, to a person.
    for i, a in enumerate(masks):
        distance = ndimage.distance_transform_edt(~a)
        for j in range(i + 1, len(masks)):
            if distance[masks[j]].min() <= TOUCH_GAP * side:
                objects[i].touches = objects[j].touches = True
    return objects


def _size_ok(size: str | None, side: float) -> bool:
    if size is None:
        return True
    lo, hi = SIZE_RANGES[size]
    return lo - SIZE_TOLERANCE <= side <= hi + SIZE_TOLERANCE


def _describe(objects: list[DetectedObject]) -> str:
    return ", ".join(f"{o.color} {o.shape}" for o in objects) or "nothing"


def check(parsed: ParsedPrompt, objects: list[DetectedObject]) -> tuple[bool, str]:
    """Whether detected objects satisfy a parsed prompt, and why not."""
    if any(o.touches for o in objects):
        return False, "objects touch (they merge into one blob): " + _describe([o for o in objects if o.touches])
    want = Counter((o.color, o.shape) for o in parsed.objects)
    got = Counter((o.color, o.shape) for o in objects)
    if parsed.category == "count":
        if got != want:
            n = len(parsed.objects)
            spec = parsed.objects[0]
            return False, f"wanted exactly {n} {spec.color} {spec.shape}s, found: {_describe(objects)}"
        if not one_size_class(objects):
            return False, "the objects of a count differ in size class: " + ", ".join(f"side {o.side:.2f}" for o in objects)
        return True, "ok"
    if got != want:
        return False, f"wanted {' + '.join(f'{c} {s}' for c, s in sorted(want.elements()))}, found: {_describe(objects)}"
    # Match each asked-for object to its detection (the parser guarantees the two differ).
    match = _assign(parsed, objects)
    if not _sizes_ok(parsed, match):
        return False, "wrong size: " + ", ".join(f"{o.color} {o.shape} side {o.side:.2f}" for o in objects)
    if parsed.category == "position":
        a, b = match
        if not relation_holds((a.cx, a.cy), (b.cx, b.cy), parsed.relation):
            return False, f"relation '{parsed.relation}' does not hold between the two objects"
    return True, "ok"


def one_size_class(objects: list[DetectedObject]) -> bool:
    """Whether objects of one shape are all small or all large (docs/shapes.md: a count's objects share a class).

    Within a class the sides differ by at most 0.20 / 0.16 = 1.25x, across classes by at least
    0.28 / 0.20 = 1.4x; the spec puts the line at 1.3x, plus a pixel: a binarised 10-pixel square
    measures 10 or 11 pixels whichever way it is read. Sizes are the square roots of the pixel areas.
    """
    sizes = [math.sqrt(o.area) for o in objects]
    return max(sizes) <= LARGE_OVER_SMALL * min(sizes) + 1.0


def _sizes_ok(parsed: ParsedPrompt, match: tuple[DetectedObject, ...]) -> bool:
    """Size words: each in its class's range (within 0.04), a large box >= 1.3x a small one."""
    sized = [(spec.size, det.side) for spec, det in zip(parsed.objects, match) if spec.size]
    if not all(_size_ok(word, side) for word, side in sized):
        return False
    small = [side for word, side in sized if word == "small"]
    large = [side for word, side in sized if word == "large"]
    return not (small and large and min(large) < LARGE_OVER_SMALL * max(small))


def _assign(parsed: ParsedPrompt, objects: list[DetectedObject]) -> tuple[DetectedObject, ...]:
    """The detection for each asked-for object, once the multisets are known to match."""
    return tuple(next(o for o in objects if (o.color, o.shape) == (spec.color, spec.shape)) for spec in parsed.objects)


def score_image(image: Image.Image | np.ndarray, prompt: str | ParsedPrompt) -> Verdict:
    parsed = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    objects = detect(image)
    passed, reason = check(parsed, objects)
    return Verdict(passed, reason, objects)


def summarize(records: list[dict]) -> dict:
    """Pass rates per category, for seen and held-out pairs, and overall.

    `records` hold `category`, `novel` and `passed` for each scored image.
    """
    def rate(rows):
        return {"pass_rate": (sum(r["passed"] for r in rows) / len(rows)) if rows else None, "n": len(rows)}

    out = {}
    for category in ("single", "pair", "count", "position"):
        rows = [r for r in records if r["category"] == category]
        out[category] = rate(rows)
    out["seen"] = rate([r for r in records if not r["novel"]])
    out["novel"] = rate([r for r in records if r["novel"]])
    out["overall"] = rate(records)
    out["by_pairs"] = {  # each category split by seen and held-out pairs
        group: {c: rate([r for r in records if r["category"] == c and r["novel"] == (group == "novel")])
                for c in ("single", "pair", "count", "position")}
        for group in ("seen", "novel")
    }
    return out
