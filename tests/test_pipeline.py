"""One command from a folder of captioned images to a model of each family that draws free-text prompts."""

import json

import pytest
from PIL import Image

from conftest import run_cli
from test_data import make_metadata_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_metadata_folder(tmp_path_factory.mktemp("data") / "tiles", n=12)


@pytest.mark.parametrize("family", ["diffusion", "autoregressive", "gan"])
def test_one_command_trains_both_stages_and_generate_takes_free_text(folder, tmp_path, family):
    out = tmp_path / family
    rc, stdout, stderr = run_cli("train", "--data", folder, "--family", family, "--minutes", "0.1",
                                 "--resolution", "16", "--out", out)
    assert rc == 0, stderr[-3000:]
    for stage in ("first-stage", "generator"):
        assert (out / stage / "final" / "model.safetensors").is_file()
        assert list((out / stage / "checkpoints").glob("step-*"))  # each stage resumable on its own
    config = json.loads((out / "config.json").read_text())["config"]
    assert "bpe" in config["tokenizer"]  # the vocabulary comes from the captions
    rc, stdout, stderr = run_cli("generate", "a zebra wearing a teal hat", "--model", out, "--out", tmp_path / "gen")
    assert rc == 0, stderr[-3000:]
    image = Image.open(tmp_path / "gen" / "000000.png")
    assert image.size == (16, 16)
    if family == "diffusion":  # measured against held-out images, with the references in the same feature space
        rc, stdout, stderr = run_cli("evaluate", "--model", out, "--data", folder, "--train-data", folder,
                                     "--out", tmp_path / "eval")
        assert rc == 0, stderr[-3000:]
        report = json.loads((tmp_path / "eval" / "report.json").read_text())
        assert report["n"] == 12 and report["generated"]["fid"] >= 0
        shuffled = report["references"]["held-out pixels shuffled"]["fid"]
        assert report["references"]["training images"]["fid"] < 1e-6 < shuffled  # same images; structure-free noise


def test_a_family_recipe_file_overrides_the_size_rule_and_resumes(folder, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "family": "diffusion", "data": {"type": "imagefolder", "path": str(folder), "resolution": 16},
        "minutes": 0.05, "output_dir": str(tmp_path / "run"), "tokenizer_vocab_size": 300,
        "generator": {"model": {"unet_channels": [16, 32], "sampling_steps": 2}, "batch_size": 4},
    }))
    rc, _, stderr = run_cli("train", recipe)
    assert rc == 0, stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["unet_channels"] == [16, 32] and config["sampling_steps"] == 2
    step = json.loads((tmp_path / "run" / "training.json").read_text())["step"]
    # Resumed with its time spent, each stage stops where it was instead of starting over.
    rc, _, stderr = run_cli("train", recipe, "--resume")
    assert rc == 0, stderr[-3000:]
    assert json.loads((tmp_path / "run" / "training.json").read_text())["step"] == step


def test_sizes_that_cannot_be_built_fail_before_anything_trains(folder, tmp_path):
    from conftest import run_cli as cli

    rc, _, err = cli("train", "--data", folder, "--family", "diffusion", "--resolution", "24", "--out", tmp_path / "o")
    assert rc == 2 and "power of two" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "first-stage").exists()
    rc, _, err = cli("train", "--data", folder, "--family", "gan", "--steps", "3")
    assert rc == 2 and "--steps is for a one-model recipe" in err
