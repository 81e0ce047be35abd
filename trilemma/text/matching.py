"""A sentence encoder pretrained to match images, as DF-GAN's text encoder was.

DF-GAN (and AttnGAN before it) conditions on a sentence vector from a text encoder pretrained with
DAMSM (Xu et al., 2018, "AttnGAN"): text and image encoders trained so that a caption scores its
own image above the other images of the batch. This is the sentence-level half of that objective
(the word-level attention half is left out: DF-GAN reads only the sentence vector), in its
symmetric InfoNCE form (CLIP, Radford et al., 2021; the loss lives in `trilemma.clip.contrastive`, shared with the CLIPs).

Why the project needs it: the text encoders trained inside the diffusion models hardly move their
mean-pooled vector when a prompt says "left" instead of "right" (0.5 apart after whitening, where
two wordings of the same scene lie 7.7 apart), and a bidirectional one pools "a red square and a
blue circle" onto "a red circle and a blue square". A GAN conditioned on such a vector cannot draw
relations or bind colors to shapes. In-batch negatives rarely differ from a caption in only its
relation, so each caption also gets a hard negative (NegCLIP, Yuksekgonul et al., 2023): the
caption of the same scene with its relation flipped, its colors swapped between objects, its count
or one attribute changed. Those are negatives of the image only (image-to-text direction).

The image tower reads the latents of a frozen KL autoencoder (cached once, as latent diffusion
does), so a step costs little more than the text encoder; it flattens a 4x4 map rather than
pooling it, keeping where things are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trilemma.clip.contrastive import contrastive_loss
from trilemma.autoencoders.kl import AutoencoderConfig, KLAutoencoder, frozen_autoencoder
from trilemma.model import TrainableModel
from trilemma.data.training import TrainingInputs, TrainingSet
from trilemma.text.encoder import TransformerTextEncoder, masked_mean
from trilemma.text.pretrained import build_text_encoder
from trilemma.text.tokenizer import PromptTokenizer


@dataclass
class SentenceMatchingConfig:
    resolution: int = 64
    autoencoder: dict = field(default_factory=lambda: asdict(AutoencoderConfig()))
    latent_scale: float = 1.0  # 1 / std of the training latents, set when training starts
    # Bidirectional (T5-style) by default: every token's state sees the whole prompt, and the
    # sentence vector is their mean, which is what DF-GAN's fusion reads.
    text_encoder: dict = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 2, "num_heads": 4,
                                                        "architecture": "t5"})
    tokenizer: dict = field(default_factory=lambda: PromptTokenizer().to_config())
    image_channels: int = 128
    embed_dim: int = 128
    hard_negatives: bool = True


class SentenceMatching(TrainableModel):
    family = "text"
    config_class = SentenceMatchingConfig
    init_keys = ("autoencoder",)  # the trained first stage whose latents it reads

    def __init__(self, config: SentenceMatchingConfig):
        super().__init__()
        self.config = config
        self.resolution = config.resolution
        self.tokenizer = PromptTokenizer.from_config(config.tokenizer)
        self.text_encoder, self.tokenize, config.text_encoder = build_text_encoder(config.text_encoder, self.tokenizer)
        if not isinstance(self.text_encoder, TransformerTextEncoder):
            raise ValueError("SentenceMatching trains its own text encoder; a frozen pretrained one has nothing to learn")
        self.autoencoder = KLAutoencoder.from_config(config.autoencoder).requires_grad_(False)
        ae = self.autoencoder.config
        c, grid = config.image_channels, config.resolution // ae.downsample
        self.image_tower = nn.Sequential(
            nn.Conv2d(ae.latent_channels, c // 2, 3, 1, 1), nn.GELU(),
            nn.Conv2d(c // 2, c, 3, 2, 1), nn.GELU(),
            nn.Conv2d(c, c, 3, 1, 1), nn.GELU(),
            nn.Flatten(), nn.Linear(c * math.ceil(grid / 2) ** 2, config.embed_dim))
        self.text_projection = nn.Linear(self.text_encoder.hidden_size, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()
        return self

    # --- the two towers -----------------------------------------------------------
    def sentence(self, prompts: list[str]) -> torch.Tensor:
        """The sentence vector DF-GAN reads: the masked mean of the token states (before projection)."""
        device = self.text_projection.weight.device
        ids, mask = self.tokenize(prompts)
        states, _ = self.text_encoder(ids.to(device), mask.to(device))
        return masked_mean(states, mask)

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(self.text_projection(self.sentence(prompts)), dim=-1)

    def embed_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(latents * self.config.latent_scale), dim=-1)

    @torch.no_grad()
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] through the frozen autoencoder's encoder, then the image tower."""
        return self.embed_latents(self.autoencoder.encode(pixels))

    # --- training -----------------------------------------------------------------
    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0):
        params = [p for p in self.parameters() if p.requires_grad]
        return {"model": torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)}

    def init_training(self, init: dict, device) -> None:
        autoencoder = frozen_autoencoder(self.autoencoder, init.get("autoencoder"), "matching encoder")
        self.config.autoencoder = autoencoder.to_config()
        self.autoencoder = autoencoder.requires_grad_(False).eval().to(device)

    def training_inputs(self) -> TrainingInputs:
        """The autoencoder's latents, encoded once, and their scale; hard negatives (required when on)."""
        return TrainingInputs(self.resolution, "latents", self.autoencoder, latent_scale=True,
                              hard_negatives=self.config.hard_negatives)

    def fit_data(self, training: TrainingSet) -> None:
        self.config.latent_scale = training.latent_scale

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        images = self.embed_latents(batch["latents"])
        texts = self.embed_text(batch["text"] + batch.get("negative_text", []))
        return contrastive_loss(images, texts, self.logit_scale)
