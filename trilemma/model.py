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
    def init_training(self, init: dict, device) -> None:
        """Start from the pretrained parts that the recipe's `init` names (a trained first stage, a model to
        fine-tune). The default takes none."""
        if init:
            raise ValueError(f"init: {type(self).__name__} starts from no pretrained parts; remove {sorted(init)}")

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

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, **kwargs) -> list[Image.Image]:
        """One PIL image per prompt; the same seed gives the same bytes."""
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


# What each generation option allows: (kind, low, high, low excluded). One table for the Python API (every
# model's generate checks its arguments against it) and the command line (its argument types come from it).
INF = float("inf")
GENERATE_OPTIONS = {
    "seed": ("int", 0, 2**62 - 1, False),
    "steps": ("int", 1, 1000, False), "sr_steps": ("int", 1, 1000, False), "stages": ("int", 1, 8, False),
    "batch_size": ("int", 1, 1024, False), "top_k": ("int", 1, 1_000_000, False), "candidates": ("int", 1, 64, False),
    "guidance_scale": ("float", 0.0, 100.0, False), "sr_guidance_scale": ("float", 0.0, 100.0, False),
    "eta": ("float", 0.0, 1.0, False), "aug_level": ("float", 0.0, 1.0, False),
    "threshold_percentile": ("float", 0.0, 1.0, True), "threshold_max_value": ("float", 1.0, INF, False),
    "clip_guidance": ("float", 0.0, 10000.0, False),
    "strength": ("float", 0.0, 1.0, True), "resample": ("int", 1, 50, False),
    "prior_guidance_scale": ("float", 0.0, 100.0, False), "prior_steps": ("int", 1, 1000, False),
    "prior_candidates": ("int", 1, 64, False),
    "temperature": ("float", 0.0, 100.0, True), "top_p": ("float", 0.0, 1.0, True), "truncation": ("float", 0.0, 100.0, True),
}


def check_option(name: str, value):
    """`value` if it is what option `name` allows (an int or a finite float in its range), else a ValueError
    whose one line names the option, the value and the range."""
    kind, low, high, low_open = GENERATE_OPTIONS[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        ok = number and float(value).is_integer() and low <= value <= high
        if ok:
            return int(value)
        raise ValueError(f"{name} must be a whole number in [{low}, {'2^62 - 1' if high == 2**62 - 1 else high}], got {value!r}")
    ok = number and value == value and (value != INF or high == INF) and low <= value <= high and not (low_open and value == low)
    if ok:
        return float(value)
    bound = f"{'(' if low_open else '['}{low}, {high}{')' if high == INF else ']'}"
    raise ValueError(f"{name} must be a number in {bound}, got {value!r}")


def check_options(**options) -> None:
    """check_option for every option given (None: the model's default); a list of seeds is checked seed by seed."""
    for name, value in options.items():
        if name == "seed" and isinstance(value, (list, tuple)):
            for s in value:
                check_option("seed", s)
        elif value is not None or name == "seed":  # every other option has a default that None stands for
            check_option(name, value)


def image_seeds(seed, n: int) -> list[int]:
    """Image i's seed: seed + i for one seed (a run's images do not depend on how it is batched), or the i-th of a
    list of n seeds, so that requests with seeds of their own can share a batch (the server's dynamic batching)
    and still draw what each would alone."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise ValueError(f"{len(seed)} seeds for {n} images; give one seed, or one per image")
        return [check_option("seed", s) for s in seed]
    seed = check_option("seed", seed)
    return [seed + i for i in range(n)]


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
