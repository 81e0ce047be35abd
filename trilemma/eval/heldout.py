"""A model trained on your images, measured on images it never saw: `trilemma evaluate --model M --data DIR`.

One image is generated per caption of a held-out image folder (the captions are the prompts), and the set
is compared with the held-out images: FID and KID (torchmetrics), precision, recall, density and coverage.

Feature space. FID's standard is Inception-v3, whose weights cannot be downloaded here; with a local
weights file (`--inception-weights`) it is used. Otherwise the features are 8x8 colour thumbnails
(192 numbers: layout and colour, no texture or shape detail), a weak but model-free space that no family
was trained in. Numbers from different feature spaces are not comparable, so the report names its space
and carries two references measured in the same space: the training images against the held-out ones (what
a model that reproduced its training set would score) and the held-out images against themselves shuffled
into noise (what structure-free images score). With a few hundred images FID is biased upwards; KID is not.
With `--features clip --clip DIR` the space is that CLIP's image embeddings (FD_CLIP).

CLIP score only with a CLIP named explicitly (`--clip`): the default Shapes CLIP says nothing about your images.
It comes with its reference, the held-out images scored with their own captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import trilemma
from trilemma.checkpoint import write_json
from trilemma.data.sources import ImageFolder, parse_data_config
from trilemma.eval.evaluate import clip_label, measure_clip_score
from trilemma.eval.fidelity import extract, fid_kid, load_feature_network, precision_recall_density_coverage
from trilemma.grid import image_grid
from trilemma.model import require_generator

THUMBNAIL = 8


class ThumbnailFeatures(nn.Module):
    """uint8 images (B, 3, H, W) -> their THUMBNAIL x THUMBNAIL area-averaged colours, in [0, 1]."""

    num_features = 3 * THUMBNAIL * THUMBNAIL  # what torchmetrics reads to size its statistics

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        return F.adaptive_avg_pool2d(x, THUMBNAIL).flatten(1).double()


def folder_images(folder: str | Path, resolution: int, n: int | None = None, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """The images (centre-cropped to the model's resolution) and first captions of an image folder: all of
    them, or n drawn at random with the seed (file names often group by kind: the first n would not do)."""
    data = ImageFolder(parse_data_config({"type": "imagefolder", "path": str(folder), "resolution": resolution}))
    picked = range(len(data)) if n is None or n >= len(data) else \
        sorted(np.random.default_rng([seed, 5]).choice(len(data), n, replace=False).tolist())
    images = [Image.fromarray(((data.image(k) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
              for k in picked]
    return images, [data.caption(k) for k in picked]


def _metrics(network, real: list[Image.Image], fake: list[Image.Image]) -> dict:
    out = fid_kid(network, real, fake)
    if not isinstance(network, dict):
        out.update(precision_recall_density_coverage(extract(network, real), extract(network, fake), k=3))
    return {k: round(v, 5) for k, v in out.items()}


def evaluate_heldout(model_name: str, heldout: str | Path, train: str | Path | None = None, n: int | None = None,
                     seed: int = 0, out: Path | None = None, inception_weights: str | None = None,
                     batch_size: int = 32, clip: str | Path | None = None, clip_features: bool = False) -> dict:
    """clip: a CLIP (shipped name or local folder) for the CLIP score, measured only when given; clip_features:
    FID and friends on that CLIP's image embeddings instead of thumbnails or Inception."""
    if clip_features and clip is None:
        raise ValueError("--features clip with --data needs --clip NAME_OR_DIR (a CLIP that knows your images)")
    if clip_features and inception_weights:
        raise ValueError("--inception-weights and --features clip name two feature spaces; give one")
    label = clip_label(clip) if clip is not None else None  # a bad CLIP fails before any sampling
    model = require_generator(trilemma.load(model_name), model_name)
    real, captions = folder_images(heldout, model.resolution, n, seed)
    fake = []
    for start in range(0, len(captions), batch_size):
        fake += model.generate(captions[start:start + batch_size], seed=seed + start)
    network = load_feature_network(inception_weights, clip=label if clip_features else None) \
        if inception_weights or clip_features else ThumbnailFeatures()
    report = {"model": str(model_name), "heldout": str(heldout), "n": len(real), "seed": seed,
              "features": f"clip:{label}" if clip_features else "inception-v3" if inception_weights else f"{THUMBNAIL}x{THUMBNAIL} colour thumbnails",
              "generated": _metrics(network, real, fake), "references": {}}
    if label is not None:
        report["clip_score"] = {**measure_clip_score(fake, captions, label),
                                "heldout_images": measure_clip_score(real, captions, label)["value"]}
    if train is not None:
        train_images, _ = folder_images(train, model.resolution, len(real), seed)
        report["references"]["training images"] = _metrics(network, real, train_images)
    rng = np.random.default_rng(seed)
    noise = [Image.fromarray(rng.permutation(np.asarray(im).reshape(-1, 3)).reshape(np.asarray(im).shape)) for im in real]
    report["references"]["held-out pixels shuffled"] = _metrics(network, real, noise)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", report)
        shown = min(16, len(real))
        image_grid(real[:shown] + fake[:shown], captions[:shown] + ["generated"] * shown, cols=shown).save(out / "samples.png")
        (out / "report.md").write_text(heldout_markdown(report))
    return report


def heldout_markdown(r: dict) -> str:
    keys = [k for k in ("fid", "kid", "precision", "recall", "density", "coverage") if k in r["generated"]]
    lines = [f"# {r['model']} on held-out images ({r['heldout']}, n = {r['n']}, one sample per caption, seed {r['seed']})",
             "", f"Features: {r['features']}.", "", "| images compared with the held-out set | " + " | ".join(keys) + " |",
             "| --- |" + " --- |" * len(keys)]
    rows = [("generated from their captions", r["generated"])] + list(r["references"].items())
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    cs = r.get("clip_score")
    if cs:
        lines += ["", f"CLIP score ({cs['clip']}): generated {cs['value']:.2f}; the held-out images with their own captions "
                      f"{cs['heldout_images']:.2f}."]
    return "\n".join(lines) + "\n"

