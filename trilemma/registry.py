"""Model classes by name, and shipped models by name.

A new model is one new file plus one line here.
"""

from __future__ import annotations

import json
from pathlib import Path


def _classes() -> dict:
    from trilemma.autoregressive.dalle import DalleTransformer
    from trilemma.autoregressive.vqgan import VQTokenizer
    from trilemma.diffusion.autoencoder import KLAutoencoder
    from trilemma.diffusion.imagen import ImagenCascade
    from trilemma.diffusion.latent_diffusion import LatentDiffusion
    from trilemma.eval.features import ShapesFeatureNet
    from trilemma.gan.dfgan import DFGAN
    from trilemma.text.matching import SentenceMatching

    return {"KLAutoencoder": KLAutoencoder, "LatentDiffusion": LatentDiffusion, "ImagenCascade": ImagenCascade,
            "VQTokenizer": VQTokenizer, "DalleTransformer": DalleTransformer,
            "DFGAN": DFGAN, "ShapesFeatureNet": ShapesFeatureNet, "SentenceMatching": SentenceMatching}


def model_class(name: str):
    classes = _classes()
    if name not in classes:
        raise KeyError(f"unknown model class {name!r}; known: {', '.join(classes)}")
    return classes[name]


WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "shapes-imagen"


FEATURE_NETWORK = "shapes-features"  # shipped beside the models, but an evaluation network, not a generator


def shipped_models() -> dict[str, Path]:
    """Shipped text-to-image models: folders under trilemma/weights with a config.json (the feature network aside)."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / "config.json").is_file() and p.name != FEATURE_NETWORK}


def model_info(path: Path) -> dict:
    """What `trilemma models` lists: size, parameters and measured scores (from scores.json)."""
    weights = path / "model.safetensors"
    info = {"name": path.name, "path": str(path), "size_mb": round(weights.stat().st_size / 1e6, 2) if weights.exists() else None}
    cfg = json.loads((path / "config.json").read_text())
    info["model_class"], info["family"] = cfg["model_class"], cfg["family"]
    scores = path / "scores.json"
    if scores.is_file():
        info["scores"] = json.loads(scores.read_text())
    return info
