"""The interface every model of every family meets.

A model trains through the one loop (`trilemma.train.loop`) by supplying
`configure_optimizers` and `training_step`, saves itself with
`save_pretrained`, and, if it draws images, answers `generate(prompts, ...)`.
The CLI, the evaluation and the benchmarks talk to this interface only.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from trilemma.pixels import NonFiniteOutput, to_pil  # noqa: F401 (the models' import of them)
from trilemma.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trilemma.data.training import TrainingInputs, TrainingSet
from trilemma.config import parse_config
from trilemma.registry import model_class
from trilemma.options import GenerateOptions, Option, check_seed, parse_options


class TrainableModel(nn.Module):
    family: str = ""
    config_class: type = None  # the @dataclass of the model's hyperparameters, which recipes are checked against

    # --- config: the model's `config_class` instance, kept as `self.config` ----
    def to_config(self) -> dict:
        """Every hyperparameter needed to rebuild the model (JSON-able): its config dataclass as a dict."""
        return asdict(self.config)

    @classmethod
    def from_config(cls, config: dict) -> "TrainableModel":
        """The model that `to_config` describes; a wrong key or type raises ConfigError naming the fix."""
        return cls(parse_config(cls.config_class, config, "model"))

    # --- what each model supplies -------------------------------------------
    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers, stepped in this order each training step (a GAN has two)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return {"model": torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)}

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        """Losses for one optimizer's step; the key "loss" is the one back-propagated."""
        raise NotImplementedError

    def forward(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        # The loop calls the (possibly DDP-wrapped) module, so gradients sync across processes.
        return self.training_step(batch, optimizer_name)

    # --- what a model trains on: declared here, built once by the trainer (trilemma.data.training) -------
    init_keys: tuple[str, ...] = ()  # what a recipe's `init` may name for this model (the loop refuses the rest)

    def init_training(self, init: dict, device) -> None:
        """Start from the pretrained parts that the recipe's `init` names (a trained first stage, a model to
        fine-tune), among `init_keys`. The default takes none."""

    def training_inputs(self) -> TrainingInputs:
        """What this model trains on (pixels at its resolution by default; latents or tokens of a frozen first
        stage, hard negatives, a measured latent scale...)."""
        resolution = getattr(self, "resolution", None) or getattr(getattr(self, "config", None), "resolution", 64)
        return TrainingInputs(resolution=resolution)

    def fit_data(self, training: TrainingSet) -> None:
        """Take what was measured on the training data (a latent scale, captions to fit to) before training."""

    def preview(self, prompts: list[str], seed: int = 0) -> tuple[list[Image.Image], list[str]]:
        """Images (and captions) for the loop's sample grid."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def external_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of modules whose weights live elsewhere (a frozen pretrained
        encoder that its config names and hash-checks): checkpoints leave them out."""
        return ()

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        external = self.external_prefixes()
        return {k: v for k, v in self.state_dict().items() if not (external and k.startswith(external))}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """load_state_dict, strict except for the external modules (already loaded from their source)."""
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        external = self.external_prefixes()
        missing = [k for k in missing if not (external and k.startswith(external))]
        if missing or unexpected:
            raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None, extra_files: dict | None = None) -> None:
        tensors = self.checkpoint_tensors()
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        config = {"family": self.family, "model_class": type(self).__name__, "config": self.to_config()}
        save_checkpoint(directory, config, tensors, extra_files)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "TrainableModel":
        config, tensors = load_checkpoint(directory)
        try:
            klass = model_class(config["model_class"])
        except KeyError as e:
            raise CheckpointError(f"{directory}: {e.args[0]}") from None
        if cls is not TrainableModel and not issubclass(klass, cls):
            raise CheckpointError(f"{directory} holds a {config['model_class']}, not a {cls.__name__}")
        if not isinstance(config.get("config"), dict):
            raise CheckpointError(f"{directory}/config.json has no model 'config'; it is damaged")
        try:
            model = klass.from_config(config["config"])
        except (ArithmeticError, LookupError, TypeError, RuntimeError, AttributeError) as e:  # (a ValueError names the fault itself)
            raise CheckpointError(f"{directory}: its config.json does not build a {klass.__name__} ({type(e).__name__}: "
                                  f"{str(e)[:120]}); it is damaged or from another version") from None
        try:
            model.load_checkpoint_tensors({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
        except RuntimeError as e:
            raise CheckpointError(f"{directory}: weights do not match the config ({str(e).splitlines()[0]})") from None
        return model.eval()


class TextToImageModel(TrainableModel):
    resolution: int = 64
    # What `generate` takes besides prompts and seed, declared once (trilemma.options): the command line's flags and
    # the server's request fields are derived from it, and `parse_options` checks a call's against it.
    generate_options: tuple[Option, ...] = ()

    @classmethod
    def parse_options(cls, **options) -> GenerateOptions:
        """The frozen options object of a call's keyword arguments (None: the default): each checked against its
        declaration, an unknown name refused in one line naming the ones this class takes."""
        return parse_options(cls.generate_options, cls.__name__, **options)

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, **options) -> list[Image.Image]:
        """One PIL image per prompt; the same seed gives the same bytes. `options`: those of `generate_options`."""
        raise NotImplementedError

    def preview(self, prompts: list[str], seed: int = 0) -> tuple[list[Image.Image], list[str]]:
        return self.generate(prompts, seed=seed), list(prompts)

    def core_networks(self) -> list[nn.Module]:
        """The networks whose forward passes count as function evaluations (NFE): the denoiser, the
        transformer, the generator; not the first stage's decoder or the text encoder."""
        raise NotImplementedError


def require_generator(model, name) -> "TextToImageModel":
    """`model` if it draws images from text; else one line saying what it is (a first stage, a feature network)."""
    if not isinstance(model, TextToImageModel):
        raise ValueError(f"{name} holds a {type(model).__name__}, which does not draw images from text; "
                         "give a text-to-image model")
    return model




def image_seeds(seed, n: int) -> list[int]:
    """Image i's seed: seed + i for one seed (a run's images do not depend on how it is batched), or the i-th of a
    list of n seeds, so that requests with seeds of their own can share a batch (the server's dynamic batching)
    and still draw what each would alone."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise ValueError(f"{len(seed)} seeds for {n} images; give one seed, or one per image")
        return [check_seed(s) for s in seed]
    seed = check_seed(seed)
    return [seed + i for i in range(n)]


def seeded_noise(shape: tuple[int, ...], seeds: list[int], device) -> torch.Tensor:
    """Standard normal noise of `shape` for each seed. One generator per image: an image depends on its seed, not
    on its batch (the samplers' starting noise; what `trilemma export` hands diffusers to draw the same images)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


def check_prompts(prompts: list[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a text or a list of texts, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("no prompts given")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError("a prompt is empty; give some text, for example 'a red circle'")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes on the command line arrive as lone surrogates
            raise ValueError(f"a prompt is not valid text ({p.encode('utf-8', 'replace')[:40]!r}...); "
                             "give UTF-8 text") from None
    return list(prompts)
