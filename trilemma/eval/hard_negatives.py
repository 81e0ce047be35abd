"""How well a joint text-image space tells a Shapes image's prompt from its hard negative (NegCLIP's test:
the same scene with its relation, color binding, count or one attribute changed)."""

from __future__ import annotations

import numpy as np
import torch

from trilemma.shapes.dataset import ShapesDataset
from trilemma.shapes.negatives import hard_negative


@torch.no_grad()
def hard_negative_accuracy(model, split: str = "test", n: int = 500, seed: int = 0) -> dict:
    """Per category, how often an image scores its own prompt above that prompt's hard negative, for a model that
    embeds images and texts in one space (`embed_images`, `embed_text`: the matching encoder, a CLIP) and has a
    `resolution`."""
    data = ShapesDataset(split, model.resolution, seed, paraphrase=False)
    rows = {}
    for start in range(0, n, 100):
        idx = list(range(start, min(n, start + 100)))
        scenes = [data.scene(i) for i in idx]
        pixels = torch.stack([data[i]["pixel_values"] for i in idx])
        images = model.embed_images(pixels)
        rng = np.random.default_rng([seed, start, 3])
        negatives = [hard_negative(s, rng).prompt for s in scenes]
        own = (images * model.embed_text([s.prompt for s in scenes])).sum(-1)
        other = (images * model.embed_text(negatives)).sum(-1)
        for s, win in zip(scenes, (own > other).tolist()):
            rows.setdefault(s.category, []).append(win)
    out = {k: float(np.mean(v)) for k, v in sorted(rows.items())}
    out["overall"] = float(np.mean([w for v in rows.values() for w in v]))
    return out
