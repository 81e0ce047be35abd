"""Generation options are declared once (trilemma.options): an option added to a model class in one declaration
appears, with its range, in the command line's --help, the HTTP API's /openapi.json and the models list the page
draws its form from, and its range is enforced in each (one line, naming the option)."""

from __future__ import annotations

import sys
import time
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from trilemma import registry
from trilemma.cli import main
from trilemma.model import TextToImageModel, check_prompts, image_seeds, to_pil
from trilemma.options import BATCH_SIZE, STEPS, Option

# The one declaration of the toy model's own option; the rest reuse the shared ones by reference (the server hands
# every generator a batch_size: its dynamic batching).
SPARKLE = Option("sparkle", float, 0.5, 0.0, 1.0, low_open=True, help="how bright the toy's images are")
TOY_OPTIONS = (STEPS.with_default(3), SPARKLE, BATCH_SIZE)


class ToyModel(TextToImageModel):
    """Grey images whose brightness is `sparkle`: what a request sets is visible in what it draws."""
    family = "toy"
    generate_options = TOY_OPTIONS
    resolution = 8

    def __init__(self):
        super().__init__()
        self.level = nn.Parameter(torch.zeros(1))

    def to_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "ToyModel":
        return cls()

    def core_networks(self):
        return []

    @torch.no_grad()
    def generate(self, prompts, seed: int = 0, progress: bool = False, **options):
        prompts = check_prompts(prompts)
        options = self.parse_options(**options)
        image_seeds(seed, len(prompts))
        return to_pil(torch.full((len(prompts), 3, self.resolution, self.resolution), options.sparkle * 2 - 1))


@pytest.fixture
def toy_registered(monkeypatch):
    """ToyModel registered as a model is: its class and its declarations' place, by name."""
    here = sys.modules[__name__].__name__
    monkeypatch.setitem(registry.MODEL_CLASSES, "ToyModel", f"{here}:ToyModel")
    monkeypatch.setitem(registry.GENERATE_OPTIONS, "ToyModel", f"{here}:TOY_OPTIONS")


@pytest.fixture
def toy_server(toy_registered, tmp_path):
    from trilemma.serve import build_app

    folder = tmp_path / "toy"
    ToyModel().save_pretrained(folder)
    app, manager = build_app([str(folder)], tmp_path / "out", queue_size=4, max_batch_images=4)
    with TestClient(app) as client:
        yield client
    manager.close()


def test_python_api_checks_the_declared_range_and_refuses_unknown_names():
    model = ToyModel()
    assert ToyModel.parse_options().sparkle == 0.5 and ToyModel.parse_options().steps == 3  # the declared defaults
    assert np.asarray(model.generate(["a red circle"], sparkle=1.0)[0]).min() == 255
    with pytest.raises(ValueError, match=r"^sparkle must be a number in \(0.0, 1.0\], got 0$"):
        model.generate(["a red circle"], sparkle=0)
    with pytest.raises(ValueError, match="ToyModel does not take glitter; it takes steps, sparkle, batch_size"):
        model.generate(["a red circle"], glitter=1.0)
    with pytest.raises(FrozenInstanceError):
        ToyModel.parse_options(sparkle=0.3).sparkle = 0.9  # one checked object travels, and nobody changes it


def test_a_declared_option_is_a_flag_of_generate_with_its_range(toy_registered, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sparkle SPARKLE how bright the toy's images are (ToyModel), in (0.0, 1.0]" in text
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "a red circle", "--sparkle", "2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().count("\n") == 0, err
    assert "argument --sparkle: must be a number in (0.0, 1.0], got 2.0" in err


def test_a_declared_option_is_a_request_field_with_its_range_and_a_field_of_the_page(toy_server):
    client = toy_server
    schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]["sparkle"]
    number = next(s for s in schema["anyOf"] if s.get("type") == "number")
    assert number["exclusiveMinimum"] == 0.0 and number["maximum"] == 1.0
    assert "how bright the toy's images are" in schema["description"]
    # The page draws its form from each model's declared fields (app.js: optionField over m.fields).
    toy = client.get("/api/models").json()[0]
    assert "sparkle" in toy["options"]
    assert {"name": "sparkle", "type": "float", "default": 0.5, "low": 0.0, "high": 1.0, "low_open": True,
            "choices": None, "help": "how bright the toy's images are"} in toy["fields"]
    assert "m.fields" in client.get("/static/app.js").text

    bad = client.post("/api/generate", json={"prompt": "a red circle", "sparkle": 1.5})
    assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["sparkle"], bad.json()

    job = client.post("/api/generate", json={"prompt": "a red circle", "sparkle": 1.0}).json()
    deadline = time.time() + 60
    while job["status"] not in ("done", "failed") and time.time() < deadline:
        job = client.get(f"/api/jobs/{job['id']}", params={"wait": 10}).json()
    assert job["status"] == "done" and job["params"]["sparkle"] == 1.0, job


# --- the shipped models' declarations ---------------------------------------------------------------------------
def test_each_class_and_the_registry_point_to_one_declaration():
    for name in registry.GENERATE_OPTIONS:
        assert registry.model_class(name).generate_options is registry.generate_options(name), name
    for name in set(registry.MODEL_CLASSES) - set(registry.GENERATE_OPTIONS):
        assert not getattr(registry.model_class(name), "generate_options", ()), f"{name} draws: register its options"


def test_an_option_name_means_one_thing_in_every_model():
    """The CLI's flag and the API's field of a name come from its first declaration: every other must agree."""
    seen = {}
    for name in registry.GENERATE_OPTIONS:
        for o in registry.generate_options(name):
            shape = (o.type, o.low, o.high, o.low_open, o.choices, o.served)
            assert seen.setdefault(o.name, shape) == shape, (name, o.name)


def test_light_declarations_name_what_the_samplers_accept():
    from trilemma.diffusion.options import CONDITIONING, SAMPLER, THRESHOLDING
    from trilemma.diffusion.sampling import SAMPLERS
    from trilemma.diffusion.thresholding import MODES
    from trilemma.diffusion.unclip import CONDITIONINGS

    assert SAMPLER.choices == SAMPLERS and THRESHOLDING.choices == MODES and CONDITIONING.choices == CONDITIONINGS
