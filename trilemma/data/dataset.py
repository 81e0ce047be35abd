"""Torch datasets over Shapes: endless, each sample a pure function of (split, index, seed)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from trilemma.data.shapes import render, sample_scene


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB to (3, H, W) float in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float().div(127.5).sub(1.0)


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

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        caption = scene.caption(np.random.default_rng([self.seed, index, 1])) if self.paraphrase else scene.prompt
        return {"pixel_values": image_to_tensor(render(scene, self.resolution)), "text": caption, "prompt": scene.prompt}


class CachedLatentDataset(Dataset):
    """Latents of the first N training scenes, encoded once by a frozen autoencoder.

    Stable Diffusion trains on latents; encoding once and reusing them takes
    the encoder out of every step. Sample i is scene i % N with a caption
    paraphrase drawn from i, so epochs see new wordings of the same scenes.
    """

    def __init__(self, latents: torch.Tensor, scenes: list, seed: int = 0, length: int = 2**31 - 1, key: str = "latents"):
        # key: what the model reads them as ("latents"; "image_tokens" for the autoregressive family)
        self.latents, self.scenes, self.seed, self.length, self.key = latents, scenes, seed, length, key

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        k = index % len(self.scenes)
        caption = self.scenes[k].caption(np.random.default_rng([self.seed, index, 1]))
        return {self.key: self.latents[k], "text": caption, "prompt": self.scenes[k].prompt}
