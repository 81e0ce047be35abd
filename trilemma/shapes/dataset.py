"""The Shapes data set as a torch dataset: endless, each sample a pure function of (split, index, seed)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from torch.utils.data import Dataset

from trilemma.data.sources import image_to_tensor
from trilemma.shapes.scenes import render, sample_scene


class ShapesDataset(Dataset):
    """Sample i is scene (split, i, seed) rendered at `resolution`, with a caption.

    Training captions are random paraphrases of the scene's prompt (drawn from
    the index, so they are reproducible); `paraphrase=False` gives the
    canonical prompt, as the evaluation uses.
    """

    def __init__(self, split: str = "train", resolution: int = 64, seed: int = 0, length: int = 2**31 - 1, paraphrase: bool = True):
        self.split, self.resolution, self.seed, self.length, self.paraphrase = split, resolution, seed, length, paraphrase

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

    # --- what an encoding cache needs (trilemma.data.cache) -------------------------------
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
