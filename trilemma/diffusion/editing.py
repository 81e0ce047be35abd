"""What every diffusion model's editing shares: the edited image and its mask as tensors, and the masks that
inpainting models train on.

Conventions are diffusers' (its `VaeImageProcessor` and inpainting pipelines), so an exported inpainting model
reads the same inputs there: images in [-1, 1], resized (Lanczos) to the model's side; masks grey-scale, resized
the same way and binarized at 0.5, **1 (white) where the model draws** and 0 where the image stays. One
difference: diffusers' pipelines encode the (masked) image by sampling the autoencoder's posterior, trilemma
takes its mode (a deterministic edit); `trilemma export` writes the posterior's variance as ~0 so that the
pipelines do the same.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from trilemma.data.sources import image_to_tensor, to_rgb
from trilemma.diffusion.options import RESAMPLE, STRENGTH
from trilemma.diffusion.sampling import repaint, sdedit


def image_tensor(image: Image.Image | torch.Tensor, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]; an image of another size is resized (Lanczos, as diffusers' pipelines do)."""
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 4 else image.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"an image tensor must be (3, H, W) or (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
        return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False) if x.shape[-2:] != (size, size) else x
    if not isinstance(image, Image.Image):
        raise ValueError(f"an image must be a PIL image or a tensor, got {type(image).__name__}")
    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image_to_tensor(image).unsqueeze(0)


def mask_tensor(mask: Image.Image | torch.Tensor, size: int) -> torch.Tensor:
    """(1, 1, size, size) in {0, 1}, 1 where the model draws. A mask of another size is resized first (an image with
    Lanczos, as diffusers' mask processor does; a tensor nearest), then binarized."""
    if isinstance(mask, Image.Image):
        mask = mask.convert("L")
        if mask.size != (size, size):
            mask = mask.resize((size, size), Image.Resampling.LANCZOS)
        m = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    elif isinstance(mask, torch.Tensor):
        m = mask.float()
        m = m.view(1, 1, *m.shape[-2:]) if m.dim() in (2, 3, 4) and m.numel() == m.shape[-1] * m.shape[-2] else None
        if m is None:
            raise ValueError(f"a mask tensor must be one (H, W) plane in [0, 1], got {tuple(mask.shape)}")
    else:
        raise ValueError(f"a mask must be a PIL image or a tensor, got {type(mask).__name__}")
    if m.shape[-1] != size or m.shape[-2] != size:
        m = F.interpolate(m, size=(size, size), mode="nearest")
    m = (m >= 0.5).float()
    if m.sum() == 0:
        raise ValueError("the mask is empty: paint white where the image should change (or give --box)")
    return m


def box_mask(box: tuple[float, float, float, float], width: int, height: int) -> Image.Image:
    """A white box (x0, y0, x1, y1 in pixels, x1 and y1 excluded) on black: the region to draw."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {x0:g} {y0:g} {x1:g} {y1:g} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
                         "(pixels of the image, x1 and y1 excluded)")
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    return mask


def covering_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """The mask at a coarser side (a latent), 1 wherever any pixel under a cell is drawn: a kept cell decodes all
    its pixels from the original, so a cell half in the hole must be drawn, not kept (RePaint in latent space)."""
    return F.adaptive_max_pool2d(mask, size) if mask.shape[-1] != size else mask


def training_mask(rng: np.random.Generator, size: int, boxes: list[tuple[float, float, float]] | None = None,
                  full: float = 0.1) -> torch.Tensor:
    """A random mask (1, size, size) for training an inpainting model, GLIDE's and SD-inpainting's mix: the whole
    image (`full`, which keeps plain text-to-image), an object's box grown by a few pixels (when the scene's
    object boxes (x, y, side, fractions of the image) are given), a random box, or free-form brush strokes."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    u = rng.random()
    if u < full:
        return torch.ones(1, size, size)
    # With object boxes: 40% an object, 30% a random box, the rest strokes; without: half boxes, half strokes.
    if boxes and u < full + 0.4:
        x, y, s = boxes[int(rng.integers(len(boxes)))]
        grow = rng.uniform(0, 0.08)
        draw.rectangle([(x - grow) * size, (y - grow) * size, (x + s + grow) * size - 1, (y + s + grow) * size - 1], fill=255)
    elif u < (full + 0.7 if boxes else full + (1 - full) / 2):
        w, h = rng.uniform(0.15, 0.65, size=2) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=255)
    else:
        for _ in range(int(rng.integers(1, 4))):
            points = [tuple(rng.uniform(0, size, size=2)) for _ in range(int(rng.integers(2, 5)))]
            draw.line(points, fill=255, width=int(rng.integers(size // 16, size // 5 + 1)), joint="curve")
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).round().unsqueeze(0)


# --- edits of pixel models (the cascades), stage by stage ---------------------------------------------------

def init_edit(init_image, strength: float | None, n: int, size: int) -> dict | None:
    """An image-to-image request: {"init": (1 or n, 3, size, size), "strength"}; None without an init image."""
    if init_image is None:
        if strength is not None:
            raise ValueError("strength applies to image-to-image; give init_image (--init-image) too")
        return None
    strength = 0.6 if strength is None else STRENGTH.check(strength)
    images = list(init_image) if isinstance(init_image, (list, tuple)) else [init_image]
    init = torch.cat([image_tensor(im, size) for im in images])
    if init.shape[0] not in (1, n):
        raise ValueError(f"give one init image, or one per prompt ({n}), not {init.shape[0]}")
    return {"init": init, "strength": strength}


def images_and_masks(image, mask, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (1 or n, 3, size, size), masks (1 or n, 1, size, size)): one image and mask shared by every prompt,
    or a list of one per prompt (a batch of different edits in one forward pass)."""
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
    x = torch.cat([image_tensor(im, size) for im in images])
    m = torch.cat([mask_tensor(mk, size) for mk in masks])
    for what, t in (("images", x), ("masks", m)):
        if t.shape[0] not in (1, n):
            raise ValueError(f"give one image and mask, or one per prompt ({n}); got {t.shape[0]} {what}")
    rows = max(x.shape[0], m.shape[0])  # one shared mask over many images (or the reverse): both per prompt
    return x.expand(rows, -1, -1, -1), m.expand(rows, -1, -1, -1)


def inpainting_method(model, method: str | None, sampler: str | None, resample: int) -> str:
    """The inpainting method a request resolves to on `model` (its default when None), or one line saying why the
    request cannot run: a method the model lacks, resampling without RePaint, or resampling with a multistep
    sampler. The models and the command line both ask here, so they refuse alike (the CLI before it writes)."""
    method = method or model.default_inpainting
    if method not in model.inpainting_methods:
        raise ValueError(f"{type(model).__name__} inpaints by {' or '.join(model.inpainting_methods)}, not {method!r}"
                         + ("; the 'model' method needs an inpainting model (shapes-ldm-f8-inpaint)" if method == "model" else ""))
    resample = RESAMPLE.check(resample)
    if resample > 1 and method != "repaint":
        raise ValueError("resample is RePaint's; choose the repaint method (the inpainting model reads the mask itself)")
    if resample > 1 and (sampler or model.config.sampler) == "dpmsolver++":
        raise ValueError("resample above 1 needs a one-step sampler, ddim or ddpm: DPM-Solver++ keeps a history of past "
                         "steps that going back would corrupt")
    return method


def inpaint_edit(image, mask, resample: int, n: int, size: int) -> dict:
    """A RePaint request for a model without an inpainting input: {"known": (images, keep), "resample"}."""
    x, m = images_and_masks(image, mask, n, size)
    return {"known": (x, 1.0 - m), "resample": resample}


def edit_rows(edit: dict | None, start: int, n: int, total: int) -> dict | None:
    """The rows of an edit's per-prompt tensors that a batch of prompts start..start+n uses (one-row ones are shared)."""
    if not edit:
        return edit

    def rows(v):
        if isinstance(v, tuple):
            return tuple(rows(u) for u in v)
        if isinstance(v, torch.Tensor):
            return v[start:start + n] if v.shape[0] == total and total > 1 else v.expand(n, *v.shape[1:])
        return v
    return {k: rows(v) for k, v in edit.items()}


def stage_edit(stage: int, edit: dict | None, size: int, device) -> dict:
    """`sample`'s edit arguments at one stage of a cascade, at that stage's side: SDEdit's start in the base stage
    only (the SR stages enlarge its result), RePaint's step at every stage (the kept region stays the input's at each
    side)."""
    if not edit:
        return {}
    if "init" in edit:
        return {"start": sdedit(_resized(edit["init"], size).to(device), edit["strength"])} if stage == 0 else {}
    image, keep = edit["known"]
    return {"wrap_step": repaint(_resized(image, size).to(device), (1.0 - covering_mask(1.0 - keep, size)).to(device),
                                 edit["resample"])}


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")
