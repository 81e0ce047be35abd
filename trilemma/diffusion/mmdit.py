"""MMDiT, the joint-attention transformer of Stable Diffusion 3 (Esser et al., 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis"), as the denoising backbone of latent diffusion.

Where a U-Net reads the prompt only through cross-attention (image features query fixed text states), MMDiT runs
one attention over the concatenation of the text tokens and the latent's patches, with separate weights per
modality, so that the text tokens are updated by the image as the image is by the text, in every block: the way
the autoregressive model, which passes position prompts, attends. The timestep and a pooled text vector drive the
adaptive layer norms. The network is diffusers' `SD3Transformer2DModel`, so a trained backbone's folder loads with
`SD3Transformer2DModel.from_pretrained`; only the sizing and the pooled vector are chosen here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import SD3Transformer2DModel

from trilemma.config import parse_config


@dataclass
class MMDiTConfig:
    # Sized by bench/mmdit_sizes.py (FLOPs and training images/s against the U-Net on the same latents): on 4 x 8 x 8
    # latents, 4 blocks 128 wide with patch 1 (64 image tokens) cost 129 MFLOP an image, the shipped U-Net 173.
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    patch_size: int = 1
    # SD3.5's RMS norm of queries and keys, which keeps attention logits bounded in long trainings; off in SD3.
    qk_norm: str | None = None

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def build_mmdit(spec: dict, latent_channels: int, latent_size: int, in_channels: int, text_dim: int) -> SD3Transformer2DModel:
    """The MMDiT of a latent diffusion model's `transformer` config entry, on latents of that shape."""
    config = parse_config(MMDiTConfig, spec, "model: transformer")
    if latent_size % config.patch_size:
        raise ValueError(f"model: transformer: patch_size {config.patch_size} does not divide the {latent_size} x "
                         f"{latent_size} latent; choose a divisor")
    return SD3Transformer2DModel(
        sample_size=latent_size, patch_size=config.patch_size, in_channels=in_channels, out_channels=latent_channels,
        num_layers=config.num_layers, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads, joint_attention_dim=text_dim,
        caption_projection_dim=config.width, pooled_projection_dim=text_dim,
        pos_embed_max_size=latent_size // config.patch_size, qk_norm=config.qk_norm,
    )


def pooled_text(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pooled prompt vector of the adaptive norms: the mean of the prompt's token states. SD3 takes CLIP's pooled
    outputs; the project's text encoders give token states first, and a mean over the real tokens is one vector for
    any of them (the trained transformer, a frozen CLIP or T5 tower)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def mmdit_forward(transformer: SD3Transformer2DModel, x: torch.Tensor, t, states: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """The transformer's output for latents x at timestep t. Like SD3, the joint attention sees every text
    position, padding included (diffusers' joint attention takes no mask); the padding states carry the encoder's
    output for the pad token, the same for every prompt."""
    t = torch.as_tensor(t, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    return transformer(hidden_states=x, encoder_hidden_states=states, pooled_projections=pooled_text(states, mask),
                       timestep=t).sample
