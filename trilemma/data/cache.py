"""Encodings of training scenes by a frozen first stage, computed once and kept on disk.

Latent diffusion trains on autoencoder latents and the autoregressive family on VQ tokens; encoding
once takes the frozen encoder out of every step, and a resumed run reads the cache back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trilemma.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trilemma.progress import progress as progress_bar


def cached_encodings(encoder: nn.Module, encode: Callable[[torch.Tensor], torch.Tensor], data, n: int, folder: Path,
                     device, kind: str) -> torch.Tensor:
    """encode(images) of the first n scenes of `data`; the cache is keyed by the encoder's weights."""
    key = {"family": "cache", "model_class": kind, "split": data.split, "seed": data.seed, "n": n,
           "autoencoder": hashlib.sha256(b"".join(
               v.detach().cpu().numpy().tobytes() for v in encoder.state_dict().values())).hexdigest()}
    try:
        config, tensors = load_checkpoint(folder)
        if {k: config.get(k) for k in key} == key:
            return tensors[kind]
    except CheckpointError:
        pass
    out = []
    with torch.no_grad():
        for start in progress_bar(range(0, n, 256), desc=f"encoding {kind}", leave=False):
            x = torch.stack([data[i]["pixel_values"] for i in range(start, min(n, start + 256))]).to(device)
            out.append(encode(x).cpu())
    out = torch.cat(out)
    try:
        save_checkpoint(folder, key, {kind: out})
    except OSError:
        pass  # a cache is an optimization; training goes on without it
    return out


def latent_training_set(autoencoder: nn.Module, config, resolution: int, device):
    """(latents, dataset) of the first `data.cache_latents` training scenes, encoded once by a frozen
    KL autoencoder: what latent diffusion and the latent GAN both train on."""
    from trilemma.data.dataset import CachedLatentDataset, ShapesDataset

    if config.data.get("resolution", resolution) != resolution:
        raise ValueError(f"data resolution {config.data['resolution']} differs from the model's {resolution}")
    n = int(config.data.get("cache_latents", 20000))
    data = ShapesDataset(config.data.get("split", "train"), resolution, config.seed, paraphrase=False)
    latents = cached_encodings(autoencoder, autoencoder.encode, data, n, Path(config.output_dir) / "latent_cache",
                               device, "latents")
    return latents, CachedLatentDataset(latents, [data.scene(i) for i in range(n)], seed=config.seed)
