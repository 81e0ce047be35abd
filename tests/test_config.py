"""parse_config turns bad recipe JSON into one clear line naming the fix, and good JSON into the dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from trilemma.config import ConfigError, parse_config


@dataclass
class Sampler:
    name: Literal["ddim", "dpmsolver++"] = "dpmsolver++"
    steps: int = 20


@dataclass
class Model:
    resolution: int = 64
    autoencoder: dict = field(default_factory=dict)
    latent_scale: float = 1.0
    unet_channels: tuple[int, ...] = (64, 128, 128)
    text_encoder: dict = field(default_factory=lambda: {"hidden_size": 32, "num_layers": 1})
    min_snr_gamma: float | None = 5.0
    sampler: Sampler = field(default_factory=Sampler)


@dataclass
class Recipe:
    model_class: str
    model: dict
    steps: int = 1000
    learning_rate: float = 1e-3
    lr_decay_start: int | None = None
    ema_decay: Optional[float] = 0.999
    validation_prompts: list[str] = field(default_factory=lambda: ["a red circle"])
    mixed_precision: Literal["no", "bf16"] = "no"
    resume: bool = False
    max_minutes: float | None = None


def error(cls, raw, where="config") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(cls, raw, where)
    return str(info.value)


def test_non_object_is_rejected():
    assert error(Model, [1, 2]) == "config must be a JSON object, got a list"


def test_unknown_key_suggests_close_match():
    assert error(Model, {"unet_channel": [8]}) == "config: unknown key 'unet_channel'; did you mean 'unet_channels'?"


def test_unknown_key_without_close_match_lists_valid_keys():
    msg = error(Sampler, {"zzz": 1})
    assert msg == "config: unknown key 'zzz'; valid keys: name, steps"


def test_several_unknown_keys_reports_first_sorted():
    assert "unknown key 'aaa'" in error(Sampler, {"zzz": 1, "aaa": 2})


def test_missing_required_key():
    assert error(Recipe, {"model": {}}, "recipe.json") == "recipe.json: missing key 'model_class'"


def test_int_field_rejects_string():
    msg = error(Recipe, {"model_class": "M", "model": {}, "steps": "100"})
    assert msg == "config: 'steps' must be an integer, got '100' (a string)"


def test_int_field_rejects_float():
    msg = error(Recipe, {"model_class": "M", "model": {}, "steps": 3.0})
    assert msg == "config: 'steps' must be an integer, got 3.0 (a number)"


def test_int_field_rejects_bool():
    msg = error(Recipe, {"model_class": "M", "model": {}, "steps": True})
    assert msg == "config: 'steps' must be an integer, got true (a boolean)"


def test_float_field_accepts_int_as_float():
    cfg = parse_config(Recipe, {"model_class": "M", "model": {}, "learning_rate": 1})
    assert cfg.learning_rate == 1.0 and type(cfg.learning_rate) is float


def test_float_field_rejects_string_and_bool():
    assert "must be a number, got '1e-3' (a string)" in error(Recipe, {"model_class": "M", "model": {}, "learning_rate": "1e-3"})
    assert "must be a number, got false (a boolean)" in error(Recipe, {"model_class": "M", "model": {}, "learning_rate": False})


def test_optional_accepts_none_and_value():
    cfg = parse_config(Recipe, {"model_class": "M", "model": {}, "lr_decay_start": None, "ema_decay": None})
    assert cfg.lr_decay_start is None and cfg.ema_decay is None
    assert parse_config(Recipe, {"model_class": "M", "model": {}, "lr_decay_start": 500}).lr_decay_start == 500


def test_optional_wrong_type_says_null_allowed():
    msg = error(Recipe, {"model_class": "M", "model": {}, "lr_decay_start": "500"})
    assert msg == "config: 'lr_decay_start' must be an integer or null, got '500' (a string)"


def test_bool_field_accepts_only_true_false():
    assert parse_config(Recipe, {"model_class": "M", "model": {}, "resume": True}).resume is True
    assert "'resume' must be true or false, got 1 (a number)" in error(Recipe, {"model_class": "M", "model": {}, "resume": 1})


def test_tuple_field_built_from_list():
    cfg = parse_config(Model, {"unet_channels": [16, 32]})
    assert cfg.unet_channels == (16, 32) and isinstance(cfg.unet_channels, tuple)


def test_tuple_field_rejects_scalar_and_bad_element():
    assert error(Model, {"unet_channels": 64}) == "config: 'unet_channels' must be a list of integers, got 64 (a number)"
    assert error(Model, {"unet_channels": [16, "32"]}) == "config: 'unet_channels[1]' must be an integer, got '32' (a string)"


def test_list_of_str_element_wrong_type():
    msg = error(Recipe, {"model_class": "M", "model": {}, "validation_prompts": ["a red circle", 3]})
    assert msg == "config: 'validation_prompts[1]' must be a string, got 3 (a number)"


def test_dict_field_rejects_non_object():
    assert error(Model, {"autoencoder": [1]}) == "config: 'autoencoder' must be a JSON object, got a list"


def test_literal_value_must_be_one_of():
    msg = error(Recipe, {"model_class": "M", "model": {}, "mixed_precision": "fp16"})
    assert msg == "config: 'mixed_precision' must be one of 'no', 'bf16', got 'fp16' (a string)"


def test_nested_dataclass_error_path_shows_where_dot_key():
    assert error(Model, {"sampler": {"steps": "20"}}, "model") == "model.sampler: 'steps' must be an integer, got '20' (a string)"
    assert error(Model, {"sampler": {"nme": "ddim"}}, "model") == "model.sampler: unknown key 'nme'; did you mean 'name'?"


def test_nested_dataclass_parsed_from_object():
    assert parse_config(Model, {"sampler": {"name": "ddim"}}).sampler == Sampler(name="ddim", steps=20)


def test_asdict_round_trips_to_equal_object():
    for obj in (Model(), Recipe(model_class="M", model={"a": [1, 2]}), Model(unet_channels=(8,), min_snr_gamma=None)):
        assert parse_config(type(obj), dataclasses.asdict(obj)) == obj


def test_messages_are_one_line():
    long_prompt = "a red circle\nabove a blue square " * 10
    bad_inputs = [
        (Model, [1]), (Model, {"unet_channel": [8]}), (Model, {"zz": 1}), (Recipe, {}),
        (Recipe, {"model_class": "M", "model": {}, "steps": long_prompt}),
        (Model, {"sampler": {"steps": [1, 2]}}), (Model, {"unet_channels": [1, {"a": "b\nc"}]}),
    ]
    for cls, raw in bad_inputs:
        msg = error(cls, raw)
        assert "\n" not in msg and len(msg) < 200, msg


def test_a_recipe_init_names_only_what_its_model_starts_from():
    # A typo in init would otherwise train on a random first stage: refused before anything trains, naming the keys.
    from trilemma.train.loop import TrainConfig

    with pytest.raises(ConfigError, match="LatentDiffusion does not take 'autoencodr'; it takes autoencoder, model"):
        TrainConfig.from_dict({"model_class": "LatentDiffusion", "model": {}, "init": {"autoencodr": "runs/ae"}})
    with pytest.raises(ConfigError, match="KLAutoencoder does not take 'model'; it starts from no pretrained parts"):
        TrainConfig.from_dict({"model_class": "KLAutoencoder", "model": {}, "init": {"model": "x"}})
    assert TrainConfig.from_dict({"model_class": "DFGAN", "model": {}, "init": {"text_encoder": "x", "autoencoder": "y"}}).init
