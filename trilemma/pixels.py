"""Tensors to images: what every model's output and every preview goes through. Kept apart from the model
interface so that light modules (progress previews) need not import it."""

from __future__ import annotations

import torch
from PIL import Image


class NonFiniteOutput(ValueError):
    pass


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] to PIL images. Non-finite values (NaN casts to black) raise instead: a black
    image written with exit status 0 is a wrong success."""
    if not torch.isfinite(images).all():
        raise NonFiniteOutput("the model produced non-finite pixel values (NaN or inf): a sampling option is out of range "
                              "(guidance scale, eta, temperature, truncation...) or the weights are damaged")
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
