"""Hard negatives of Shapes captions (NegCLIP, Yuksekgonul et al., 2023): a caption of the same scene
changed to contradict it, in its relation, its color binding, its count or one attribute. The matching
encoder and DF-GAN's matching-aware loss train against them."""

from __future__ import annotations

import copy

import numpy as np

from trilemma.shapes.scenes import INVERSE_RELATION, COLORS, SHAPES, Scene


def hard_negative(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with what its caption says changed: a caption that does not describe it."""
    neg = copy.deepcopy(scene)
    o = neg.objects
    if scene.category == "position" and rng.random() < 0.5:
        neg.relation = INVERSE_RELATION[scene.relation]
        return neg
    if scene.category == "count":
        n = int(rng.choice([k for k in (2, 3, 4) if k != len(o)]))
        neg.objects = [copy.deepcopy(o[0]) for _ in range(n)]
        return neg
    if len(o) == 2 and o[0].color != o[1].color and o[0].shape != o[1].shape and rng.random() < 0.5:
        o[0].color, o[1].color = o[1].color, o[0].color  # the binding, not the words, changes
        return neg
    k = int(rng.integers(len(o)))
    target, rest = o[k], {(x.color, x.shape) for i, x in enumerate(o) if i != k}
    # One attribute of one object, never onto the other object (a caption naming it twice is not a Shapes caption).
    options = [(c, target.shape) for c in COLORS if c != target.color] if rng.random() < 0.5 else \
        [(target.color, sh) for sh in SHAPES if sh != target.shape]
    options = [x for x in options if x not in rest]
    target.color, target.shape = options[int(rng.integers(len(options)))]
    return neg
