"""Stable Diffusion's first stage, sized for Shapes: a KL autoencoder (Rombach et al., 2022).

diffusers' `AutoencoderKL` is the network; this file adds its training
objective. Shapes images are flat colors on a flat background, so an L1 + L2
reconstruction loss with a light KL term (SD's 1e-6 scale) suffices: no
perceptual or adversarial term, which would need pretrained weights or cost
CPU time the benchmark does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from trilemma.autoencoders import ReconstructionPreview
from trilemma.model import TrainableModel


@dataclass
class AutoencoderConfig:
    resolution: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks: 64 px -> 16x16 latent
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_block_attention: bool = False  # measured: attention at this size costs time, not quality
    kl_weight: float = 1e-6

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class KLAutoencoder(ReconstructionPreview, TrainableModel):
    family = "first-stage"  # shared by the families; see trilemma/autoencoders
    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        n = len(config.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
            sample_size=config.resolution, mid_block_add_attention=config.mid_block_attention,
        )

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        posterior = self.vae.encode(images).latent_dist
        return posterior.sample(generator) if sample else posterior.mode()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        x = batch["pixel_values"]
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        l1 = F.l1_loss(recon, x)
        l2 = F.mse_loss(recon, x)
        kl = posterior.kl().mean()
        return {"loss": l1 + l2 + self.config.kl_weight * kl, "l1": l1, "mse": l2, "kl": kl}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images)).clamp(-1, 1)



def frozen_autoencoder(current: KLAutoencoder, source: str | None, user: str) -> KLAutoencoder:
    """The first stage a latent model trains on: the trained one in `source` (an autoencoder's folder, or a
    model with one inside), which must make latents of the shape the `user` was built for; else `current`."""
    if not source:
        return current
    autoencoder = load_autoencoder(source)
    have, want = autoencoder.config, current.config
    if (have.latent_channels, have.downsample, have.resolution) != (want.latent_channels, want.downsample, want.resolution):
        raise ValueError(f"{source}: its latents are {have.latent_channels} x {have.resolution // have.downsample}^2 at "
                         f"{have.resolution} px, but this {user} was built for {want.latent_channels} x "
                         f"{want.resolution // want.downsample}^2 at {want.resolution} px; set the model's 'autoencoder' "
                         "config to match it")
    return autoencoder


def load_autoencoder(source: str) -> KLAutoencoder:
    """The KL autoencoder in a checkpoint folder: an autoencoder's own, or the one inside a latent model."""
    donor = TrainableModel.from_pretrained(source)
    autoencoder = donor if isinstance(donor, KLAutoencoder) else getattr(donor, "autoencoder", None)
    if not isinstance(autoencoder, KLAutoencoder):
        raise ValueError(f"{source} is neither a KL autoencoder nor a model with one")
    return autoencoder
