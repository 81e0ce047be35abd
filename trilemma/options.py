"""Generation options, each declared once: its type, default, range and help.

A model class lists what its `generate` takes in `generate_options`, a tuple of `Option`s; the Python API
(`TextToImageModel.parse_options`), the command line's flags (`trilemma generate --help`) and the HTTP API's
request fields (/openapi.json, the page's form) are all derived from those tuples, so a new option is one
declaration and its range is checked once, by `Option.check`.

The options every family shares are declared here; a family's own live in a light module beside its models
(`trilemma.diffusion.options`, `trilemma.autoregressive.options`, `trilemma.gan.options`), which imports neither
torch nor a model: the CLI builds `--help` from them in a tenth of a second (`trilemma.registry.generate_options`).
This module imports only the standard library, for the same reason.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

INF = float("inf")
MAX_SEED = 2**62 - 1


@dataclass(frozen=True)
class Option:
    """One option of `generate`. `default` None: the model's config decides (each checkpoint's sampling steps,
    guidance scale, sampler...), so the declaration cannot know it; `parse_options` leaves it None for the model."""
    name: str
    type: type  # int, float or str
    default: object = None
    low: float | None = None  # numbers: the range [low, high], or (low, high] with low_open
    high: float | None = None
    low_open: bool = False
    help: str = ""
    choices: tuple[str, ...] | None = None  # texts: the values allowed
    metavar: str | None = None  # the command line's name for the value, where the flag's own would mislead
    served: bool = True  # offered by the HTTP API (not: a path on the server's disk, or the server's own batching)

    def with_default(self, default) -> "Option":
        """The same option with another model's default (a GAN's larger batch)."""
        return dataclasses.replace(self, default=default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def bounds(self) -> str:
        """The range as the errors and the help write it: [1, 1000], (0.0, 1.0], [1.0, inf)."""
        if self.choices:
            return ", ".join(self.choices)
        if self.low is None:
            return ""
        high = "2^62 - 1" if self.high == MAX_SEED else self.high
        return f"{'(' if self.low_open else '['}{self.low}, {high}{')' if self.high == INF else ']'}"

    def check(self, value):
        """`value` as the option's type if the option allows it, else a ValueError whose one line names the option,
        the value and what it allows. None stands for the default."""
        if value is None:
            return self.default
        if self.type is str:
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a text, got {value!r}")
            if self.choices and value not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type is int:
            if number and float(value).is_integer() and self.low <= value <= self.high:
                return int(value)
            raise ValueError(f"{self.name} must be a whole number in {self.bounds()}, got {value!r}")
        if number and value == value and (value != INF or self.high == INF) and self.low <= value <= self.high \
                and not (self.low_open and value == self.low):
            return float(value)
        raise ValueError(f"{self.name} must be a number in {self.bounds()}, got {value!r}")

    def describe(self) -> dict:
        """The declaration as JSON (the server's /api/models, from which the page draws its form)."""
        return {"name": self.name, "type": self.type.__name__, "default": None if self.default == INF else self.default,
                "low": self.low, "high": None if self.high == INF else self.high, "low_open": self.low_open,
                "choices": list(self.choices) if self.choices else None, "help": self.help}


# --- shared by the families -------------------------------------------------------------------------------------
SEED = Option("seed", int, 0, 0, MAX_SEED, help="image k uses seed + k")
STEPS = Option("steps", int, None, 1, 1000, help="sampling steps")
GUIDANCE_SCALE = Option("guidance_scale", float, None, 0.0, 100.0, help="classifier-free guidance scale")
NEGATIVE_PROMPT = Option("negative_prompt", str, "",
                         help="what the image should not show (classifier-free guidance's unconditional branch)")
BATCH_SIZE = Option("batch_size", int, 64, 1, 1024, help="images per forward pass", served=False)
# How many images are drawn per image kept (CLIP reranking, variations of an image): one cap for all.
CANDIDATES = Option("candidates", int, 1, 1, 64, help="candidates drawn per image kept")


class GenerateOptions:
    """Base of the frozen dataclasses that `parse_options` returns: one attribute per declared option."""

    def replace(self, **changes) -> "GenerateOptions":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@functools.lru_cache(maxsize=None)
def options_class(declared: tuple[Option, ...]) -> type:
    """A frozen dataclass with one field per option, its default the declaration's (cached per declaration)."""
    return dataclasses.make_dataclass("GenerateOptions", [(o.name, o.type, dataclasses.field(default=o.default))
                                                          for o in declared], bases=(GenerateOptions,), frozen=True)


def parse_options(declared: tuple[Option, ...], owner: str, **given) -> GenerateOptions:
    """The options object of `given` (names to values; None: the default): every value checked against its
    declaration, an unknown name refused in one line that names the known ones."""
    by_name = {o.name: o for o in declared}
    unknown = [k for k in given if k not in by_name]
    if unknown:
        raise ValueError(f"{owner} does not take {', '.join(unknown)}; it takes {', '.join(by_name) or 'no options'}")
    return options_class(tuple(declared))(**{k: by_name[k].check(v) for k, v in given.items()})


def check_seed(seed) -> int:
    """One seed in SEED's range (None refused: a seed is never left to chance here)."""
    if seed is None:
        raise ValueError(f"seed must be a whole number in {SEED.bounds()}, got None")
    return SEED.check(seed)
