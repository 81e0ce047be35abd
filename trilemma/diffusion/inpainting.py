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

from trilemma.autoencoders.kl import frozen_autoencoder
from trilemma.data.training import TrainingInputs
from trilemma.diffusion.editing import training_mask
from trilemma.diffusion.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from trilemma.diffusion.objective import denoising_loss


@dataclass
class LatentInpaintingConfig(LatentDiffusionConfig):
    full_mask_fraction: float = 0.1  # masks covering the whole image: plain text-to-image steps


class LatentInpainting(LatentDiffusion):
    config_class = LatentInpaintingConfig
    inpainting_methods = ("model", "repaint")
    default_inpainting = "model"

    def extra_input_channels(self) -> int:
        return self.latent_channels + 1  # the mask and the masked image's latents

    def init_training(self, init: dict, device) -> None:
        """Start from a trained text-to-image model (`init.model`: its U-Net grows five zero-initialised input
        channels) or from a trained autoencoder alone."""
        self.fine_tuning = bool(init.get("model"))
        if self.fine_tuning:
            self.init_from(init["model"])
        else:
            self._set_autoencoder(frozen_autoencoder(self.autoencoder, init.get("autoencoder"), "U-Net"))
        self.autoencoder.to(device).eval()

    def training_inputs(self) -> TrainingInputs:
        """Pixels (the masked image is encoded each step), each with a training mask; the latent scale measured
        through the autoencoder unless fine-tuning (the donor's stays). A stream gets its masks in the training
        step, without object boxes."""
        return TrainingInputs(self.resolution, "pixels", self.autoencoder, latent_scale=not getattr(self, "fine_tuning", False),
                              per_sample=self.with_training_mask)

    def with_training_mask(self, sample: dict, index: int, data) -> dict:
        """A random training mask for sample `index`, drawn from (seed, index); where the data knows its objects'
        boxes (Shapes scenes), some masks cover an object."""
        rng = np.random.default_rng([data.seed, index, 11])
        sample["mask"] = training_mask(rng, self.resolution, data.object_boxes(index), self.config.full_mask_fraction)
        return sample

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
            device = next(self.network.parameters()).device
            blank = torch.zeros(1, 3, self.resolution, self.resolution, device=device)
            cond = self.conditioning(blank, torch.ones(1, 1, self.resolution, self.resolution, device=device))
            cond = cond.expand(len(prompts), -1, -1, -1)
        return super()._generate_batch(prompts, seeds, steps, guidance_scale, sampler_name, negative_prompt, progress,
                                       cond=cond, **kwargs)
