"""CLIP's objective, shared by every contrastive model here (CLIP, the noise-aware CLIP, DF-GAN's
sentence encoder): symmetric InfoNCE over a batch (Radford et al., 2021) with optional hard negative
captions that count against their own image only (NegCLIP, Yuksekgonul et al., 2023). Written by hand:
transformers' `CLIPModel` computes the plain loss inside its forward, without hard negatives or a cap on
the temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def contrastive_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unit-norm image embeddings (B, D) against text embeddings (B, D), or (2B, D) with each image's hard negative
    caption in rows B..2B-1. The temperature exp(logit_scale) is clipped at 100, as in CLIP. Returns the loss and,
    for the log, in-batch retrieval accuracy, the share of images beating their hard negative, and the temperature."""
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    b = images.shape[0]
    target = torch.arange(b, device=images.device)
    image_to_text = scale * images @ texts.T  # (B, B or 2B): hard negatives are negatives of their image only
    text_to_image = scale * texts[:b] @ images.T
    loss = (F.cross_entropy(image_to_text, target) + F.cross_entropy(text_to_image, target)) / 2
    with torch.no_grad():
        retrieval = (image_to_text[:, :b].argmax(1) == target).float().mean()
        hard = (image_to_text[target, target] > image_to_text[target, target + b]).float().mean() \
            if image_to_text.shape[1] > b else torch.tensor(float("nan"))
    return {"loss": loss, "retrieval": retrieval, "beats_hard_negative": hard, "temperature": 1 / scale.detach()}
