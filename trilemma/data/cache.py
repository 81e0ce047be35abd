"""A data set encoded once by a frozen first stage, kept on disk: what latent and token models train on.

Latent diffusion, the latent GAN and the matching encoder train on KL-autoencoder latents, the
autoregressive transformer on VQ tokens. Encoding once takes the frozen encoder out of every step, and a
resumed run reads the cache back. The cache is keyed by a fingerprint of the data (files, captions,
transforms) and of the encoder's weights, so a changed folder or a retrained first stage encodes again.

An indexed dataset is cached whole (a folder; the first `n` scenes of endless Shapes); a random flip is
kept by caching both orientations, a random crop is not (the cache holds centre crops). A streamed
dataset (webdataset) is not cached: the model encodes each batch as it comes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from trilemma.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trilemma.data.sources import WebDatasetStream, build_dataset, parse_data_config
from trilemma.progress import progress as progress_bar


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


class CachedEncodings(Dataset):
    """Sample i of the dataset, its image replaced by its cached encoding under `key`."""

    def __init__(self, encodings: torch.Tensor, dataset, key: str, flipped: torch.Tensor | None = None):
        self.encodings, self.flipped, self.dataset, self.key = encodings, flipped, dataset, key
        self.seed = dataset.seed

    def __len__(self) -> int:
        return 2**31 - 1

    def scene(self, i: int):
        """Shapes: the scene behind sample i (hard negatives are made from it)."""
        return self.dataset.scene(self.dataset.cached_sample(i, len(self.encodings))["index"])

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset.cached_sample(i, len(self.encodings))
        k = sample.pop("index")
        source = self.flipped if sample.pop("flip") and self.flipped is not None else self.encodings
        return {self.key: source[k], **sample}


def encoded_training_set(encoder: nn.Module, encode: Callable, config, resolution: int, device, kind: str, key: str,
                         shapes_n: int) -> tuple[torch.Tensor | None, Dataset]:
    """(encodings, dataset) of a recipe's training data: cached encodings of an indexed dataset (the first
    `shapes_n` scenes of Shapes), or (None, the stream itself) for streamed data."""
    data = parse_data_config(config.data, resolution=resolution)
    if data.resolution != resolution:
        raise ValueError(f"data resolution {data.resolution} differs from the model's {resolution}; "
                         f"set data.resolution to {resolution} or build the model for {data.resolution}")
    dataset = build_dataset(data, config.seed)
    if isinstance(dataset, IterableDataset):
        return None, dataset
    n = shapes_n if data.type == "shapes" else len(dataset.source)
    folder = Path(config.output_dir) / f"{kind.removesuffix('s')}_cache"  # latent_cache, token_cache
    encodings = cached_encodings(encoder, encode, dataset.cache_images(n), n, folder, device, kind, dataset.fingerprint())
    flipped = None
    if data.random_flip:
        mirrored = (x.flip(-1) for x in dataset.cache_images(n))
        flipped = cached_encodings(encoder, encode, mirrored, n, folder.with_name(f"{kind}_cache_flipped"), device, kind,
                                   dataset.fingerprint())
    return encodings, CachedEncodings(encodings, dataset, key, flipped)


def latent_training_set(autoencoder: nn.Module, config, resolution: int, device) -> tuple[float, Dataset]:
    """(latent scale, dataset): latents of the training data encoded once by a frozen KL autoencoder,
    what latent diffusion, the latent GAN and the matching encoder train on, and Stable Diffusion's
    scaling factor, 1 / their standard deviation (for streamed data, of its first 256 samples' latents)."""
    data = parse_data_config(config.data)
    latents, dataset = encoded_training_set(autoencoder, autoencoder.encode, config, resolution, device, "latents",
                                            "latents", data.cache_latents)
    if latents is None:
        return latent_scale(autoencoder, dataset, device, 256), dataset
    return float(1.0 / latents.std()), dataset


def latent_scale(autoencoder: nn.Module, dataset, device, n: int = 1024) -> float:
    """1 / the standard deviation of the latents of the dataset's first `n` samples, for a model that reads the
    pixels and does not cache latents (GALIP). Every process must scale alike: a stream is read from its start,
    whole, not from this process's shards."""
    if isinstance(dataset, IterableDataset):
        stream = WebDatasetStream(dataset.data, dataset.seed, rank=0, world=1).stream()
        pixels = [next(stream)["pixel_values"] for _ in range(n)]
    else:
        pixels = [dataset[i]["pixel_values"] for i in range(n)]
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode(torch.stack(pixels[i:i + 128]).to(device)).cpu() for i in range(0, n, 128)])
    return float(1.0 / latents.std())

