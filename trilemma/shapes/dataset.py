"""The Shapes data set as a data source (`{"type": "shapes"}`): endless, each sample a pure function of
(split, index, seed). It answers everything a model may ask of its data (`trilemma.data.sources.DataSource`):
its word vocabulary, hard negative captions made from the scene, the objects' boxes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from torch.utils.data import Dataset

from trilemma.config import ConfigError
from trilemma.data.sources import DataConfig, DataSource, image_to_tensor
from trilemma.shapes.negatives import hard_negative
from trilemma.shapes.scenes import COLORS, COUNT_WORDS, RELATION_WORDS, SHAPES, SIZE_RANGES, render, sample_scene
from trilemma.text.tokenizer import SPECIAL_TOKENS


def shapes_vocabulary() -> list[str]:
    """Every word of the Shapes caption grammar, after the special tokens: a word-level tokenizer over it is exact
    and tiny (the shipped Shapes models use it)."""
    words = ["a", "an", "one", "and", *SIZE_RANGES, *COLORS, *SHAPES, *(s + "s" for s in SHAPES)]
    words += [*COUNT_WORDS.values(), *map(str, COUNT_WORDS)]
    words += [w for phrases in RELATION_WORDS.values() for p in phrases for w in p.split()]
    return list(SPECIAL_TOKENS) + list(dict.fromkeys(words))


class ShapesDataset(DataSource, Dataset):
    """Sample i is scene (split, i, seed) rendered at `resolution`, with a caption.

    Training captions are random paraphrases of the scene's prompt (drawn from
    the index, so they are reproducible); `paraphrase=False` gives the
    canonical prompt, as the evaluation uses.
    """

    makes_hard_negatives = True

    def __init__(self, split: str = "train", resolution: int = 64, seed: int = 0, length: int = 2**31 - 1, paraphrase: bool = True):
        self.split, self.resolution, self.seed, self.length, self.paraphrase = split, resolution, seed, length, paraphrase

    @classmethod
    def check_config(cls, data: DataConfig, where: str) -> None:
        if data.random_flip or not data.center_crop:
            raise ConfigError(f"{where}: Shapes scenes are drawn at the resolution, never cropped or flipped (a flip would "
                              "turn 'left of' into a lie); remove random_flip and center_crop")

    @classmethod
    def build(cls, data: DataConfig, seed: int, rank: int | None = None, world: int | None = None) -> "ShapesDataset":
        return cls(data.split, data.resolution, seed)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int):
        return sample_scene(self.split, index, self.seed)

    def caption(self, index: int, draw: int) -> str:
        """A paraphrase of scene `index`'s prompt, drawn from `draw` (the sample's index in the stream)."""
        return self.scene(index).caption(np.random.default_rng([self.seed, draw, 1]))

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        caption = self.caption(index, index) if self.paraphrase else scene.prompt
        return {"pixel_values": image_to_tensor(render(scene, self.resolution)), "text": caption, "prompt": scene.prompt}

    # --- what a model may ask (DataSource) --------------------------------------------------
    def captions(self, limit: int) -> list[str]:
        return [self.caption(i, i) for i in range(limit)]  # endless; a caption needs no render

    @classmethod
    def vocabulary(cls) -> list[str]:
        return shapes_vocabulary()

    def hard_negative(self, index: int, rng: np.random.Generator) -> str:
        return hard_negative(self.scene(index), rng).caption(rng)

    def object_boxes(self, index: int) -> list[tuple[float, float, float]]:
        return [(o.x, o.y, o.s) for o in self.scene(index).objects]

    # --- what an encoding cache needs (trilemma.data.cache) -------------------------------
    def cache_size(self, limit: int) -> int:
        return limit  # endless: the recipe's cache_latents / cache_tokens scenes

    def cache_images(self, n: int):
        """The images a first stage encodes once: the first n scenes (Shapes is endless)."""
        for k in range(n):
            yield image_to_tensor(render(self.scene(k), self.resolution))

    def cached_sample(self, i: int, n: int) -> dict:
        """Sample i of a stream over the n cached scenes: scene i mod n, a fresh paraphrase each time."""
        k = i % n
        return {"index": k, "flip": False, "text": self.caption(k, i), "prompt": self.scene(k).prompt}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(["shapes", self.split, self.resolution, self.seed]).encode()).hexdigest()[:16]
