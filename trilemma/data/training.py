"""What a model trains on, built once by the trainer: the one place where a recipe's data becomes batches.

A model declares its inputs (`TrainableModel.training_inputs`, a `TrainingInputs`): pixels at its
resolution, or the latents of a frozen KL autoencoder, or the tokens of a frozen VQ tokenizer; whether it
wants hard negative captions, a measured latent scale, captions to fit itself to, or a per-sample addition
(an inpainting model's training masks). `build_training_set` reads the recipe's data source once, encodes
and caches what needs encoding (`trilemma.data.cache`), and hands the model back a `TrainingSet`; models
never reach down into `trilemma.data` for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from trilemma.data.cache import encoded_training_set, latent_scale
from trilemma.data.sources import DataConfig, DataSource, build_dataset

ENCODINGS = ("pixels", "latents", "tokens")
# Images a latent scale is measured on when it is not read off a cache: a model reading pixels (1,024), and a
# latent model on streamed data, which caches nothing (256).
LATENT_SCALE_SAMPLES = {"uncached": 1024, "stream_latents": 256}


@dataclass
class TrainingInputs:
    """What a model trains on (declared by the model, built by `build_training_set`)."""

    resolution: int  # of the images; the recipe's data.resolution must match it when given
    encoding: str = "pixels"  # "pixels", or "latents" / "tokens" of `encoder`, encoded once and cached
    encoder: nn.Module | None = None  # the frozen first stage (its .encode), for latents and tokens, or for the scale
    hard_negatives: bool | None = False  # True: each sample gets a "negative_text"; None: where the source makes them
    latent_scale: bool = False  # measure Stable Diffusion's scaling factor, 1 / std of the encoder's latents
    captions: int = 0  # captions the model reads before training (to learn a tokenizer, fit text statistics)
    # sample, its index and the source -> the sample with more keys (indexed data only; a stream is passed as is)
    per_sample: Callable[[dict, int, DataSource], dict] | None = None


@dataclass
class TrainingSet:
    """What `build_training_set` hands back: the dataset the loop reads, the source behind it, and what the
    model asked to be measured on it."""

    dataset: Dataset
    source: DataSource
    latent_scale: float | None = None
    captions: list[str] = field(default_factory=list)


def build_training_set(data: DataConfig, inputs: TrainingInputs, seed: int, output_dir: str | Path, device) -> TrainingSet:
    if inputs.encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {inputs.encoding!r}; a model trains on one of {', '.join(ENCODINGS)}")
    if inputs.encoding != "pixels" and inputs.encoder is None:
        raise ValueError(f"training on {inputs.encoding} needs the frozen first stage that encodes them")
    if data.resolution is None:
        data = replace(data, resolution=inputs.resolution)
    if data.resolution != inputs.resolution:
        raise ValueError(f"data resolution {data.resolution} differs from the model's {inputs.resolution}; "
                         f"set data.resolution to {inputs.resolution} or build the model for {data.resolution}")
    source = build_dataset(data, seed)
    dataset, scale = source, None
    if inputs.encoding != "pixels":
        kind = inputs.encoding
        limit = data.cache_latents if kind == "latents" else data.cache_tokens
        key = "latents" if kind == "latents" else "image_tokens"
        encodings, dataset = encoded_training_set(inputs.encoder, source, data.random_flip, limit,
                                                  Path(output_dir), device, kind, key)
        if inputs.latent_scale:
            scale = float(1.0 / encodings.std()) if encodings is not None else \
                latent_scale(inputs.encoder, source, device, LATENT_SCALE_SAMPLES["stream_latents"])
    elif inputs.latent_scale:
        scale = latent_scale(inputs.encoder, source, device, LATENT_SCALE_SAMPLES["uncached"])
    answers = dataset  # the source, or its cache of encodings (which maps an index to the source's)
    if inputs.hard_negatives or (inputs.hard_negatives is None and source.makes_hard_negatives):
        if not source.makes_hard_negatives or isinstance(dataset, IterableDataset):
            raise ValueError(f"the {data.type} data makes no hard negative captions (Shapes data does); train on such data, "
                             "or set the model's hard negatives (hard_negatives / hard_mismatch) to false")
        dataset = WithHardNegatives(dataset, answers)
    if inputs.per_sample is not None and not isinstance(dataset, IterableDataset):
        dataset = PerSample(dataset, answers, inputs.per_sample)
    captions = source.captions(inputs.captions) if inputs.captions else []
    return TrainingSet(dataset, source, scale, captions)


class WithHardNegatives(Dataset):
    """Items with a "negative_text": a caption of the item's image changed to contradict it (NegCLIP, Yuksekgonul
    et al., 2023), made by the source (`DataSource.hard_negative`) from the sample's index."""

    def __init__(self, data: Dataset, answers: DataSource):
        self.data, self.answers = data, answers

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.answers.seed, index, 2])
        return {**self.data[index], "negative_text": self.answers.hard_negative(index, rng)}


class PerSample(Dataset):
    """Items with what the model adds to each (from the item, its index and the source's answers about it)."""

    def __init__(self, data: Dataset, answers: DataSource, add: Callable[[dict, int, DataSource], dict]):
        self.data, self.answers, self.add = data, answers, add

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return self.add(dict(self.data[index]), index, self.answers)
