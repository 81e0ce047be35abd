"""Text-guided inpainting by a model trained for it: GLIDE's recipe (Nichol et al., 2021, sec. 4.3) in Stable
Diffusion's latent form (SD-inpainting, Rombach et al., 2022).

GLIDE fine-tunes its text-to-image model with four extra input channels, the masked image's RGB and the mask;
Stable Diffusion's inpainting model does the same in latent space: five extra channels, the mask at the
latent's side and the latents of the masked image, with the new input weights starting at zero so the
fine-tune starts from the text-to-image model. Both train on random masks with caption dropout; here the mix is
GLIDE's and LaMa's (`trilemma.diffusion.editing.training_mask`): an object's box (Shapes scenes know their
objects), random boxes, brush strokes, and the whole image some of the time, which keeps it a text-to-image
model too.

Inputs are laid out as diffusers' `StableDiffusionInpaintPipeline` lays them ([noisy latent, mask, masked image
latents]; the masked image is the image times (mask < 0.5); the mask goes to the latent's side by nearest
interpolation), so `trilemma export` writes a folder that pipeline loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, IterableDataset

from trilemma.diffusion.editing import training_mask
from trilemma.diffusion.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from trilemma.diffusion.objective import denoising_loss


@dataclass
class LatentInpaintingConfig(LatentDiffusionConfig):
    full_mask_fraction: float = 0.1  # masks covering the whole image: plain text-to-image steps


class WithTrainingMasks(Dataset):
    """Sample i with a random training mask, drawn from (seed, i); Shapes scenes add their objects' boxes."""

    def __init__(self, dataset: Dataset, resolution: int, seed: int, full: float):
        self.dataset, self.resolution, self.seed, self.full = dataset, resolution, seed, full

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.dataset[i])
        boxes = [(o.x, o.y, o.s) for o in self.dataset.scene(i).objects] if hasattr(self.dataset, "scene") else None
        sample["mask"] = training_mask(np.random.default_rng([self.seed, i, 11]), self.resolution, boxes, self.full)
        return sample


class LatentInpainting(LatentDiffusion):
    config_class = LatentInpaintingConfig
    inpainting_methods = ("model", "repaint")
    default_inpainting = "model"

    def extra_input_channels(self) -> int:
        return self.latent_channels + 1  # the mask and the masked image's latents

    def prepare_training(self, config, device):
        """Start from a trained text-to-image model (`init.model`: its U-Net grows five zero-initialised input
        channels) or from a trained autoencoder alone; read pixels (the masked image is encoded each step)."""
        from trilemma.autoencoders.kl import frozen_autoencoder
        from trilemma.data.cache import latent_scale
        from trilemma.data.sources import build_dataset, parse_data_config

        if config.init.get("model"):
            self.init_from(config.init["model"])
        else:
            self._set_autoencoder(frozen_autoencoder(self.autoencoder, config.init.get("autoencoder"), "U-Net"))
        self.autoencoder.to(device).eval()
        dataset = build_dataset(parse_data_config(config.data, resolution=self.resolution), config.seed)
        if not config.init.get("model"):
            self.config.latent_scale = latent_scale(self.autoencoder, dataset, device)
        if isinstance(dataset, IterableDataset):
            return dataset  # a stream: masks are drawn in the training step, without object boxes
        return WithTrainingMasks(dataset, self.resolution, config.seed, self.config.full_mask_fraction)

    def conditioning(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """[mask at the latent's side, latents of the masked image]: the extra input channels."""
        masked = self.autoencoder.encode(images * (masks < 0.5)) * self.config.latent_scale
        return torch.cat([F.interpolate(masks, size=(self.latent_size, self.latent_size)), masked], dim=1)

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        x = batch["pixel_values"]
        masks = batch.get("mask")
        if masks is None:
            rng = np.random.default_rng(int(torch.randint(2**62, ()).item()))
            masks = torch.stack([training_mask(rng, self.resolution, None, self.config.full_mask_fraction)
                                 for _ in range(x.shape[0])]).to(x.device)
        with torch.no_grad():
            latents = self.autoencoder.encode(x) * self.config.latent_scale
            cond = self.conditioning(x, masks.to(x.device, x.dtype))
        drop = torch.rand(x.shape[0]) < self.config.condition_dropout
        states, mask = self.encode_text(["" if d else t for d, t in zip(drop.tolist(), batch["text"])])
        loss, mse = denoising_loss(self.noise_scheduler,
                                   lambda z, t: self.denoise(torch.cat([z, cond], dim=1), t, states, mask), latents,
                                   self.config.prediction_type, self.config.min_snr_gamma)
        return {"loss": loss, "mse": mse}

    def _inpaint(self, prompts, x, m, method, seed, steps, guidance_scale, sampler, negative_prompt, batch_size, progress,
                 resample):
        if method == "repaint":
            return super()._inpaint(prompts, x, m, method, seed, steps, guidance_scale, sampler, negative_prompt,
                                    batch_size, progress, resample)
        return self._generate_all(prompts, seed, steps, guidance_scale, sampler, negative_prompt, batch_size, progress,
                                  cond=self.conditioning(x, m))

    def _generate_batch(self, prompts, seeds, steps, guidance_scale, sampler_name, negative_prompt, progress, cond=None,
                        **kwargs):
        if cond is None:  # text-to-image (and image-to-image): the whole image masked, as in training
            device = next(self.unet.parameters()).device
            blank = torch.zeros(1, 3, self.resolution, self.resolution, device=device)
            cond = self.conditioning(blank, torch.ones(1, 1, self.resolution, self.resolution, device=device))
            cond = cond.expand(len(prompts), -1, -1, -1)
        return super()._generate_batch(prompts, seeds, steps, guidance_scale, sampler_name, negative_prompt, progress,
                                       cond=cond, **kwargs)
