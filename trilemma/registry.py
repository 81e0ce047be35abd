"""Model classes by name, and shipped models by name.

The registry points one way: names to "module:Class" strings, imported only when looked up, so
`trilemma.model` and the loop depend on no family. A new model is one new file plus one line here.
"""

from __future__ import annotations

import difflib
import importlib
import json
from pathlib import Path

MODEL_CLASSES = {
    "KLAutoencoder": "trilemma.autoencoders.kl:KLAutoencoder",
    "VQTokenizer": "trilemma.autoencoders.vq:VQTokenizer",
    "LatentDiffusion": "trilemma.diffusion.latent_diffusion:LatentDiffusion",
    "LatentInpainting": "trilemma.diffusion.inpainting:LatentInpainting",
    "ImagenCascade": "trilemma.diffusion.imagen:ImagenCascade",
    "UnCLIP": "trilemma.diffusion.unclip:UnCLIP",
    "DalleTransformer": "trilemma.autoregressive.dalle:DalleTransformer",
    "DFGAN": "trilemma.gan.dfgan:DFGAN",
    "GALIP": "trilemma.gan.galip:GALIP",
    "SentenceMatching": "trilemma.text.matching:SentenceMatching",
    "ShapesFeatureNet": "trilemma.shapes.features:ShapesFeatureNet",
    "CLIP": "trilemma.clip.clip:CLIP",
    "NoiseAwareCLIP": "trilemma.clip.noise_aware:NoiseAwareCLIP",
}


# Data sources by a recipe's data "type" (trilemma.data.sources.DataSource): a new source is one file plus one
# line here. The default type, and the source of the default vocabulary, is the Shapes benchmark's.
DATA_SOURCES = {
    "shapes": "trilemma.shapes.dataset:ShapesDataset",
    "imagefolder": "trilemma.data.sources:ImageFolderSource",
    "webdataset": "trilemma.data.sources:WebDatasetStream",
    "parquet": "trilemma.data.tables:ParquetSource",
}
DEFAULT_DATA_SOURCE = "shapes"


# What each generating class's `generate` takes, the same tuple as its `generate_options`, named here so that the
# command line's --help and the server's request fields read the declarations without importing torch or a model
# (a family's options live in a light module beside its models; a test checks that both point to one tuple).
GENERATE_OPTIONS = {
    "LatentDiffusion": "trilemma.diffusion.options:LATENT_DIFFUSION",
    "LatentInpainting": "trilemma.diffusion.options:LATENT_DIFFUSION",
    "ImagenCascade": "trilemma.diffusion.options:IMAGEN",
    "UnCLIP": "trilemma.diffusion.options:UNCLIP",
    "DalleTransformer": "trilemma.autoregressive.options:DALLE",
    "DFGAN": "trilemma.gan.options:GAN",
    "GALIP": "trilemma.gan.options:GAN",
}


def generate_options(name: str) -> tuple:
    """The declared generation options (trilemma.options.Option) of model class `name`; () if it draws nothing."""
    if name not in GENERATE_OPTIONS:
        return ()
    module, _, attr = GENERATE_OPTIONS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _lookup(table: dict[str, str], name: str, what: str):
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(table)}"
        raise KeyError(f"unknown {what} {name!r}; {hint}")
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def model_class(name: str):
    return _lookup(MODEL_CLASSES, name, "model class")


def data_source(name: str):
    """The DataSource class registered for a recipe's data "type"."""
    return _lookup(DATA_SOURCES, name, "data type")


WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "shapes-imagen"
INPAINTING_MODEL = "shapes-ldm-f8-inpaint"  # what `trilemma edit` uses when no model is named


# Families of shipped networks that do not draw images from text: the CLIPs (listed apart, as scorers) and
# evaluation networks (a benchmark's feature network).
SCORING_FAMILIES = ("clip", "noised-clip")
NON_GENERATOR_FAMILIES = SCORING_FAMILIES + ("evaluation",)


def _family(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("family")
    except (OSError, ValueError, AttributeError):
        return None


def shipped_models() -> dict[str, Path]:
    """Shipped text-to-image models: folders under trilemma/weights with a config.json (the CLIPs and evaluation
    networks aside)."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / "config.json").is_file()
            and _family(p) not in NON_GENERATOR_FAMILIES}


def shipped_clips() -> dict[str, Path]:
    """Shipped CLIPs (trilemma.clip.load_clip takes their names)."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / "config.json").is_file() and _family(p) == "clip"}


def benchmark(path: Path) -> str:
    """What a shipped model was trained and scored on: "shapes", or the data set its scores.json names."""
    scores = path / "scores.json"
    return json.loads(scores.read_text()).get("benchmark", "shapes") if scores.is_file() else "shapes"


def benchmark_models(name: str) -> dict[str, Path]:
    """The shipped models trained and scored on benchmark `name` (their scores.json says which)."""
    return {model: path for model, path in shipped_models().items() if benchmark(path) == name}


def shapes_models() -> dict[str, Path]:
    """The shipped models of the Shapes benchmark (the ones `evaluate`, `compare` and the scorer's labelled set cover)."""
    return benchmark_models("shapes")


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
