"""Hard negatives of Shapes captions (NegCLIP, Yuksekgonul et al., 2023): a caption of the same scene
changed to contradict it, in its relation, its color binding, its count or one attribute. The matching
encoder and DF-GAN's matching-aware loss train against them."""

from __future__ import annotations

import copy

import numpy as np
import torch

from trilemma.shapes.scenes import _INVERSE, COLORS, SHAPES, Scene


def hard_negative(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with what its caption says changed: a caption that does not describe it."""
    neg = copy.deepcopy(scene)
    o = neg.objects
    if scene.category == "position" and rng.random() < 0.5:
        neg.relation = _INVERSE[scene.relation]
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


class _WithHardNegatives(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        item = self.data[index]
        # A cache of encodings holds N scenes and repeats them (it tells which); a Shapes dataset draws scene i.
        scene = self.data.scene(index)
        rng = np.random.default_rng([self.data.seed, index, 2])
        return {**item, "negative_text": hard_negative(scene, rng).caption(rng)}


def with_hard_negatives(dataset) -> torch.utils.data.Dataset:
    """Items of a Shapes dataset (or a cache of its encodings) with a "negative_text": a caption of the
    item's scene, changed to contradict it."""
    if not hasattr(getattr(dataset, "dataset", dataset), "scene"):  # a cache of encodings: what it encoded
        raise ValueError("hard negatives are made from Shapes scenes; train on Shapes data, or set hard_negatives to false")
    return _WithHardNegatives(dataset)


def maybe_with_hard_negatives(dataset, setting: bool | None):
    """`dataset` with hard negatives when `setting` is True, or None on Shapes data (the only data that makes them);
    as it is when False, or None elsewhere. True on other data is refused with the fix."""
    has_scenes = hasattr(dataset, "scene")
    if setting and not has_scenes:
        raise ValueError("hard negatives are made from Shapes scenes; train on Shapes data, or set hard_negatives to false")
    return with_hard_negatives(dataset) if setting or (setting is None and has_scenes) else dataset
