"""A data set encoded once by a frozen first stage, kept on disk: what latent and token models train on.

Latent diffusion, the latent GAN and the matching encoder train on KL-autoencoder latents, the
autoregressive transformer on VQ tokens. Encoding once takes the frozen encoder out of every step, and a
resumed run reads the cache back. The cache is keyed by a fingerprint of the data (files, captions,
transforms) and of the encoder's weights, so a changed folder or a retrained first stage encodes again.

An indexed dataset is cached whole (a folder; the first `n` samples of an endless source such as Shapes); a random flip is
kept by caching both orientations, a random crop is not (the cache holds centre crops). A streamed
dataset (webdataset) is not cached: the model encodes each batch as it comes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from trilemma.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trilemma.data.sources import DataSource
from trilemma.progress import progress as progress_bar
from trilemma.registry import data_source


def weights_fingerprint(module: nn.Module) -> str:
    return hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in module.state_dict().values())).hexdigest()


def cached_encodings(encoder: nn.Module, encode: Callable[[torch.Tensor], torch.Tensor], images, n: int,
                     folder: Path, device, kind: str, data_key: str) -> torch.Tensor:
    """encode(x) of the n images that `images` yields, read back from `folder` when the keys match."""
    key = {"family": "cache", "model_class": kind, "data": data_key, "n": n, "encoder": weights_fingerprint(encoder)}
    try:
        config, tensors = load_checkpoint(folder)
        if {k: config.get(k) for k in key} == key:
            return tensors[kind]
    except CheckpointError:
        pass
    out, chunk = [], []
    with torch.no_grad():
        for x in progress_bar(images, total=n, desc=f"encoding {kind}", leave=False):
            chunk.append(x)
            if len(chunk) == 256:
                out.append(encode(torch.stack(chunk).to(device)).cpu())
                chunk = []
        if chunk:
            out.append(encode(torch.stack(chunk).to(device)).cpu())
    out = torch.cat(out)
    try:
        save_checkpoint(folder, key, {kind: out})
    except OSError:
        pass  # a cache is an optimization; training goes on without it
    return out


class CachedEncodings(DataSource, Dataset):
    """Sample i of the dataset, its image replaced by its cached encoding under `key`; what the model asks of the
    data about sample i (its hard negative, its objects' boxes) is asked of the source's sample behind it."""

    def __init__(self, encodings: torch.Tensor, dataset: DataSource, key: str, flipped: torch.Tensor | None = None):
        self.encodings, self.flipped, self.dataset, self.key = encodings, flipped, dataset, key
        self.seed = dataset.seed
        self.makes_hard_negatives = dataset.makes_hard_negatives

    def __len__(self) -> int:
        return 2**31 - 1

    def source_index(self, i: int) -> int:
        return self.dataset.cached_sample(i, len(self.encodings))["index"]

    def hard_negative(self, index: int, rng: np.random.Generator) -> str | None:
        return self.dataset.hard_negative(self.source_index(index), rng)

    def object_boxes(self, index: int):
        return self.dataset.object_boxes(self.source_index(index))

    def captions(self, limit: int) -> list[str]:
        return self.dataset.captions(limit)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset.cached_sample(i, len(self.encodings))
        k = sample.pop("index")
        source = self.flipped if sample.pop("flip") and self.flipped is not None else self.encodings
        return {self.key: source[k], **sample}


def encoded_training_set(encoder: nn.Module, dataset: DataSource, random_flip: bool, limit: int, output_dir: Path,
                         device, kind: str, key: str) -> tuple[torch.Tensor | None, Dataset]:
    """(encodings, dataset) of a training source: cached encodings of an indexed source (all of a finite one; the
    first `limit` samples of an endless one), or (None, the stream itself) for streamed data."""
    if isinstance(dataset, IterableDataset):
        return None, dataset
    n = dataset.cache_size(limit)
    folder = output_dir / f"{kind.removesuffix('s')}_cache"  # latent_cache, token_cache
    encodings = cached_encodings(encoder, encoder.encode, dataset.cache_images(n), n, folder, device, kind,
                                 dataset.fingerprint())
    flipped = None
    if random_flip:
        mirrored = (x.flip(-1) for x in dataset.cache_images(n))
        flipped = cached_encodings(encoder, encoder.encode, mirrored, n, folder.with_name(f"{kind}_cache_flipped"), device,
                                   kind, dataset.fingerprint())
    return encodings, CachedEncodings(encodings, dataset, key, flipped)


def latent_scale(autoencoder: nn.Module, dataset, device, n: int = 1024) -> float:
    """1 / the standard deviation of the latents of the dataset's first `n` samples, for a model that reads the
    pixels and does not cache latents (GALIP), or for streamed data. Every process must scale alike: a stream is
    read from its start, whole, not from this process's shards."""
    if isinstance(dataset, IterableDataset):
        stream = data_source(dataset.data.type).build(dataset.data, dataset.seed, rank=0, world=1).stream()
        pixels = [next(stream)["pixel_values"] for _ in range(n)]
    else:
        pixels = [dataset[i]["pixel_values"] for i in range(n)]
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode(torch.stack(pixels[i:i + 128]).to(device)).cpu() for i in range(0, n, 128)])
    return float(1.0 / latents.std())
