"""The `trilemma` command: outputs, determinism, and one clear line for bad input."""

import json
import os

import pytest
from PIL import Image

from conftest import assert_same_image, run_cli


def _assert_clean_error(rc, out, err, *words):
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_generate_writes_pngs_grid_and_metadata_and_is_deterministic(tiny_ldm_dir, tmp_path):
    rc, out, err = run_cli("generate", "two red circles above a blue square", "-n", "3", "--seed", "0",
                           "--model", tiny_ldm_dir, "--out", tmp_path / "a", "--steps", "2")
    assert rc == 0, err
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["000000.png", "000001.png", "000002.png"]
    assert all(r["text"] == "two red circles above a blue square" for r in rows)
    assert (tmp_path / "a" / "grid.png").is_file()
    rc, _, err = run_cli("generate", "two red circles above a blue square", "-n", "3", "--seed", "0",
                         "--model", tiny_ldm_dir, "--out", tmp_path / "b", "--steps", "2", "--batch-size", "2")
    assert rc == 0, err
    for r in rows:  # another batch size: the same images, up to float rounding
        assert_same_image(Image.open(tmp_path / "a" / r["file_name"]), Image.open(tmp_path / "b" / r["file_name"]), r)


def test_generate_from_a_prompts_file_into_an_image_folder_that_scores(tiny_ldm_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    rc, _, err = run_cli("data", "prompts", "--split", "test", "--n", "5", "--out", prompts)
    assert rc == 0, err
    assert len(prompts.read_text().splitlines()) == 5
    rc, _, err = run_cli("generate", "--prompts", prompts, "--model", tiny_ldm_dir, "--out", tmp_path / "gen", "--steps", "1")
    assert rc == 0, err
    rc, out, err = run_cli("score", tmp_path / "gen", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert {"single", "pair", "count", "position", "seen", "novel", "overall"} <= set(summary)
    assert summary["overall"]["n"] == 5
    assert (tmp_path / "gen" / "scores.json").is_file()


def test_export_and_score_ground_truth(tmp_path):
    rc, _, err = run_cli("data", "export", "--split", "test-novel", "--n", "40", "--out", tmp_path / "gt")
    assert rc == 0, err
    first = json.loads((tmp_path / "gt" / "metadata.jsonl").read_text().splitlines()[0])
    assert {"file_name", "text"} <= set(first) and (tmp_path / "gt" / first["file_name"]).is_file()
    rc, out, err = run_cli("score", tmp_path / "gt", "--json")
    assert rc == 0, err
    assert json.loads(out)["overall"]["pass_rate"] == 1.0
    rc, out, err = run_cli("data", "preview", "--n", "6", "--out", tmp_path / "p.png")
    assert rc == 0 and (tmp_path / "p.png").is_file(), err


def test_models_lists_the_shipped_default():
    rc, out, err = run_cli("models", "--default")
    assert rc == 0 and out.strip() == "shapes-imagen", err
    rc, out, err = run_cli("models")
    assert rc == 0 and "shapes-imagen (default)" in out and "shapes-ldm:" in out and "MB" in out, (out, err)


@pytest.mark.parametrize("args, words", [
    (["generate", "a red circle", "--model", "no-such-model"], ["unknown model"]),
    (["generate", "   "], ["empty"]),
    (["generate"], ["no prompt"]),
    (["generate", "a red circle", "-n", "0"], ["at least 1"]),
    (["generate", "a red circle", "--steps", "0"], ["must be a whole number in [1, 1000]"]),
    (["score", "/nonexistent-folder"], ["metadata.jsonl"]),
    (["train", "/nonexistent.json"], ["no training config"]),
])
def test_bad_input_gets_one_clear_line(args, words):
    _assert_clean_error(*run_cli(*args), *words)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, tiny_ldm_dir):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--out", locked / "x"), "cannot write")


def test_unwritable_output_path_is_reported(tmp_path, tiny_ldm_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--out", blocker / "x"), "cannot write")


def test_missing_or_corrupted_checkpoint(tiny_ldm_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_ldm_dir, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", broken), "corrupted")
    (broken / "model.safetensors").unlink()
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", broken), "no model.safetensors")


def test_score_reports_an_unreadable_image(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "a red circle"}\n')
    (tmp_path / "x.png").write_bytes(b"not a png")
    _assert_clean_error(*run_cli("score", tmp_path), "not a readable image")


def test_generate_refuses_a_model_that_draws_no_images(tiny_autoencoder_dir, tmp_path):
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", tiny_autoencoder_dir, "--out", tmp_path), "does not draw")


@pytest.mark.parametrize("content, words", [
    ('{"model": {}}', "missing key 'model_class'"),
    ('[1, 2]', "JSON object"),
    ('{"model_class": "LatentDiffusion", "model": {}, "steps": 0}', "at least 1"),
    ('{not json', "not valid JSON"),
    # A typo in a model key, a wrong type, a typo in a model class, a bad data object: the nearest valid name.
    ('{"model_class": "LatentDiffusion", "model": {"unet_channel": [32, 64]}}', "did you mean 'unet_channels'?"),
    ('{"model_class": "LatentDiffusion", "model": {}, "steps": "100"}', "'steps' must be an integer, got '100'"),
    ('{"model_class": "LatentDifusion", "model": {}}', "did you mean 'LatentDiffusion'?"),
    ('{"model_class": "LatentDiffusion", "model": {}, "data": {"type": "folder"}}', "must be one of shapes, imagefolder"),
    ('{"model_class": "LatentDiffusion", "model": {}, "data": {"resolutoin": 32}}', "did you mean 'resolution'?"),
    ('{"model_class": "LatentDiffusion", "model": {"text_encoder": {"hidden": 8}}}', "did you mean 'hidden_size'?"),
    ('{"family": "difusion", "data": {"type": "shapes"}}', "'family' must be one of"),
    ('{"family": "gan", "data": {"type": "imagefolder"}}', "needs 'path'"),
])
def test_train_rejects_bad_recipes(tmp_path, content, words):
    path = tmp_path / "recipe.json"
    path.write_text(content)
    _assert_clean_error(*run_cli("train", path), words)


def test_generate_refuses_an_option_the_model_does_not_take(tiny_ldm_dir, tmp_path):
    rc, out, err = run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--thresholding", "dynamic", "--out", tmp_path / "o")
    _assert_clean_error(rc, out, err, "does not take --thresholding")


def test_train_refuses_a_text_encoder_for_a_model_without_one(tmp_path):
    path = tmp_path / "vq.json"
    path.write_text('{"model_class": "VQTokenizer", "model": {}}')
    _assert_clean_error(*run_cli("train", path, "--text-encoder", "all-minilm-l6-v2"), "has no text encoder")


def test_train_with_data_needs_a_family_and_a_real_folder(tmp_path):
    _assert_clean_error(*run_cli("train", "--data", tmp_path), "a family")
    _assert_clean_error(*run_cli("train", "--data", tmp_path / "nowhere", "--family", "gan"), "no such folder")
    _assert_clean_error(*run_cli("train", "--data", tmp_path, "--family", "gan", "--out", tmp_path / "o"), "no captioned images")


@pytest.mark.parametrize("option, value, words", [
    ("--guidance-scale", "nan", "[0.0, 100.0]"), ("--guidance-scale", "1e308", "[0.0, 100.0]"), ("--eta", "-1", "[0.0, 1.0]"),
    ("--eta", "nan", "[0.0, 1.0]"), ("--top-p", "1.5", "(0.0, 1.0]"), ("--temperature", "nan", "(0.0, 100.0]"),
    ("--truncation", "inf", "(0.0, 100.0]"), ("--seed", "18446744073709551616", "2^62"), ("-n", "100000", "at most 10000"),
    ("--steps", "5000", "[1, 1000]"), ("--threshold-percentile", "0", "(0.0, 1.0]"), ("--seed", "1.5", "must be a number"),
])
def test_generate_refuses_out_of_range_options_before_any_work(tmp_path, option, value, words):
    _assert_clean_error(*run_cli("generate", "a red circle", option, value, "--out", tmp_path / "o"), words)
    assert not (tmp_path / "o").exists()


def test_a_model_that_draws_nan_is_an_error_not_a_black_image(tiny_ldm_dir, tmp_path):
    import torch

    from trilemma.model import TrainableModel

    model = TrainableModel.from_pretrained(tiny_ldm_dir)
    with torch.no_grad():
        next(model.unet.parameters()).fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan-model")
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", tmp_path / "nan-model", "--out", tmp_path / "o"),
                        "non-finite")
    assert not list((tmp_path / "o").glob("*.png"))


@pytest.mark.parametrize("key, value, words", [
    ("grad_clip", -1, "'grad_clip' must be a finite number of at least 0"), ("ema_decay", 2.0, "'ema_decay' must be in [0, 1)"),
    ("warmup_steps", -5, "'warmup_steps'"), ("checkpoint_every", -1, "'checkpoint_every'"), ("steps", True, "'steps' must be an integer"),
    ("log_every", 0, "'log_every' must be at least 1"), ("learning_rate", 0, "'learning_rate' must be a finite number above 0"),
])
def test_recipes_with_out_of_range_values_are_refused(tmp_path, key, value, words):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"model_class": "LatentDiffusion", "model": {}, key: value}))
    _assert_clean_error(*run_cli("train", path), words)


def test_a_folder_in_use_by_a_live_run_is_refused_and_a_stale_lock_is_taken_over(tiny_ldm_dir, tmp_path):
    import os
    import subprocess

    out = tmp_path / "o"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".trilemma.lock").write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname(),
                                                        "what": "trilemma generate"}))
        _assert_clean_error(*run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--out", out), "in use by a running")
        path = tmp_path / "recipe.json"
        path.write_text(json.dumps({"model_class": "LatentDiffusion", "model": {}, "output_dir": str(out), "steps": 1}))
        _assert_clean_error(*run_cli("train", path), "in use by a running trilemma generate")
    finally:
        sleeper.kill()
        sleeper.wait()
    rc, _, err = run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--out", out, "--steps", "2")
    assert rc == 0, err  # the owner is gone: the lock is stale
    assert not (out / ".trilemma.lock").exists() and os.listdir(out)


def test_generate_writes_metadata_as_it_goes_and_resumes_where_it_stopped(tiny_ldm_dir, tmp_path):
    out = tmp_path / "o"
    args = ["generate", "a red circle", "two blue squares", "-n", "2", "--model", tiny_ldm_dir, "--steps", "2",
            "--batch-size", "1", "--out", out]
    assert run_cli(*args)[0] == 0
    whole = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    first = (out / "000003.png").read_bytes()
    # As a killed run leaves it: two images named, a torn line, a stray image it never named.
    lines = (out / "metadata.jsonl").read_text().splitlines()
    (out / "metadata.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    (out / "000003.png").unlink()
    rc, stdout, err = run_cli(*args, "--resume")
    assert rc == 0 and "2 were there already" in stdout, err
    assert [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()] == whole
    assert (out / "000003.png").read_bytes() == first
    # A resume of another command is refused: its images would be named for other prompts.
    _assert_clean_error(*run_cli("generate", "a green triangle", "-n", "4", "--model", tiny_ldm_dir, "--out", out,
                                 "--resume"), "does not continue this command")


@pytest.mark.parametrize("content, words", [
    ("5", "not a JSON object"), ("null", "not a JSON object"), ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"family": "diffusion", "model_class": "LatentDiffusion", "config": {"unet_channel": [8]}}', "did you mean 'unet_channels'"),
    ('{"family": "diffusion", "model_class": "LatentDiffusion", "config": {"resolution": "64"}}', "must be an integer"),
    ('{"family": "diffusion", "model_class": "LatentDiffusion", "config": 5}', "'config' is not a JSON object"),
])
def test_a_damaged_config_json_gets_one_line(tiny_ldm_dir, tmp_path, content, words):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_ldm_dir, folder)
    (folder / "config.json").write_text(content)
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", folder, "--out", tmp_path / "o"), words)


@pytest.mark.parametrize("row, words", [
    ('{"file_name": "x.png", "text": 123}', "must be texts"), ('{"file_name": 5, "text": "a red circle"}', "must be texts"),
])
def test_score_refuses_metadata_of_the_wrong_types(tmp_path, row, words):
    (tmp_path / "metadata.jsonl").write_text(row + "\n")
    _assert_clean_error(*run_cli("score", tmp_path), words)


def test_evaluate_refuses_a_model_that_draws_no_images(tiny_autoencoder_dir, tmp_path):
    _assert_clean_error(*run_cli("evaluate", "--model", tiny_autoencoder_dir, "--n", "4", "--out", tmp_path), "does not draw")
