"""trilemma: text-to-image diffusion, autoregressive and GAN models, trained, run and compared side by side.

    import trilemma
    model = trilemma.load("shapes-ldm")          # a shipped model, or a checkpoint folder
    images = model.generate(["a red circle above a blue square"], seed=0)
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load(name_or_dir: str | Path = None):
    """A model by shipped name (see `trilemma models`), from a checkpoint folder, or from a diffusers pipeline folder
    that `trilemma export` wrote (`trilemma.interop.diffusers_layout`)."""
    from trilemma.checkpoint import model_folder
    from trilemma.interop.diffusers_layout import load_folder
    from trilemma.registry import DEFAULT_MODEL

    name_or_dir = name_or_dir or DEFAULT_MODEL
    if not isinstance(name_or_dir, (str, Path)):
        raise TypeError(f"load takes a shipped model's name or a folder, got {type(name_or_dir).__name__}")
    return load_folder(model_folder(name_or_dir))


__all__ = ["load", "__version__"]
