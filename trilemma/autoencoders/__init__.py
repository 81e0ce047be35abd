"""First stages shared by the families: the KL autoencoder (latent diffusion, the latent GAN, the matching
encoder) and the VQ tokenizer (the autoregressive transformer). No family owns them, so none imports another."""

from __future__ import annotations

import torch

from trilemma.data.sources import build_dataset, parse_data_config
from trilemma.model import to_pil


class ReconstructionPreview:
    """The loop's sample grid for a first stage: training images above their reconstructions. Mixed into
    both first stages before TrainableModel."""

    def fit_data(self, training) -> None:
        self._preview = preview_samples(training.dataset, self.config.resolution)

    def preview(self, prompts: list[str], seed: int = 0):
        real, captions = getattr(self, "_preview", None) or preview_samples(None, self.config.resolution)
        recon = self.reconstruct(real.to(next(self.parameters()).device)).cpu()
        return to_pil(torch.cat([real, recon])), captions + ["reconstruction"] * len(captions)


def preview_samples(dataset, resolution: int, n: int = 8) -> tuple[torch.Tensor, list[str]]:
    """(images, captions) a first stage shows reconstructed in the loop's sample grid: the first n training
    samples, or (no dataset: a loaded model) the default data source's `test` split (Shapes renders)."""
    if dataset is None:
        dataset = build_dataset(parse_data_config({"split": "test"}, resolution=resolution))
    stream = iter(dataset) if isinstance(dataset, torch.utils.data.IterableDataset) else None
    samples = [next(stream) if stream else dataset[i] for i in range(n)]
    return torch.stack([s["pixel_values"] for s in samples]), [s["text"] for s in samples]
