"""`trilemma evaluate` and `trilemma compare` end to end on tiny models of two families."""

import json

import torch

from trilemma.cli import main
from trilemma.gan.dfgan import DFGAN

TINY_GAN = {"resolution": 64, "z_dim": 8, "ngf": 4, "ndf": 4, "affine_hidden": 8,
            "text_encoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2}}


def test_evaluate_reports_alignment_fidelity_and_cost_and_reuses_its_cache(tmp_path, capsys):
    torch.manual_seed(0)
    DFGAN.from_config(TINY_GAN).save_pretrained(tmp_path / "gan")
    args = ["evaluate", "--model", str(tmp_path / "gan"), "--n", "12", "--out", str(tmp_path / "eval"), "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["pass_rate"] == 0.0  # an untrained GAN draws no scene
    assert report["fidelity"]["fid"] > 1.0 and 0.0 <= report["fidelity"]["precision"] <= 1.0
    assert report["cost"]["function_evaluations_per_image"] == 1  # one generator pass per image
    assert report["cost"]["images_per_second_best"] >= report["cost"]["images_per_second_batch1"] * 0.5
    cached = sorted((tmp_path / "cache").rglob("*.png"))
    assert len(cached) == 12
    stamp = cached[0].stat().st_mtime_ns
    assert main(args) == 0
    assert cached[0].stat().st_mtime_ns == stamp  # the rerun read the images back
    assert "FID" in (tmp_path / "eval" / "report.md").read_text()


def test_compare_writes_table_plots_and_grid(tmp_path):
    for seed in (0, 1):
        torch.manual_seed(seed)
        DFGAN.from_config(TINY_GAN).save_pretrained(tmp_path / f"gan{seed}")
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "gan0"), str(tmp_path / "gan1"), "--n", "12", "--out", str(out),
                 "--cache", str(tmp_path / "cache")]) == 0
    table = (out / "COMPARE.md").read_text()
    assert "| gan0 | gan |" in table and "| gan1 | gan |" in table and "trilemma compare" in table
    assert (out / "trilemma.png").is_file() and (out / "samples.png").is_file()


def _compared_tiny_gan(tmp_path):
    """A tiny GAN saved and compared once: (the compare arguments, its report's path, the output and cache folders)."""
    torch.manual_seed(0)
    DFGAN.from_config(TINY_GAN).save_pretrained(tmp_path / "gan")
    out, cache = tmp_path / "cmp", tmp_path / "cache"
    args = ["compare", str(tmp_path / "gan"), "--n", "12", "--out", str(out), "--cache", str(cache)]
    assert main(args) == 0
    return args, out / "gan" / "report.json", out, cache


def test_compare_rescores_a_report_of_an_older_scorer_from_its_cached_samples(tmp_path):
    from trilemma.shapes.scorer import SCORER_VERSION

    args, path, out, cache = _compared_tiny_gan(tmp_path)
    old = json.loads(path.read_text())
    # As if an older scorer had passed three images and measured a FID that must be kept.
    old.update(scorer_version=SCORER_VERSION - 1, pass_rate=0.25)
    old["fidelity"]["fid"] = 123.0
    path.write_text(json.dumps(old))
    assert main(args) == 0
    new = json.loads(path.read_text())
    assert new["scorer_version"] == SCORER_VERSION and new["pass_rate"] == 0.0
    assert new["previous_scorer"] == {"version": SCORER_VERSION - 1, "pass_rate": 0.25}
    assert new["fidelity"]["fid"] == 123.0  # measured on the same cached samples, so kept
    assert f"was (scorer v{SCORER_VERSION - 1})" in (out / "COMPARE.md").read_text()
    # With the samples gone, the old FID would describe other images: everything is measured again.
    new.update(scorer_version=SCORER_VERSION - 1)
    path.write_text(json.dumps(new))
    for png in cache.rglob("*.png"):
        png.unlink()
    assert main(args) == 0
    again = json.loads(path.read_text())
    assert again["fidelity"]["fid"] != 123.0 and "previous_scorer" not in again


def test_compare_measures_again_a_model_whose_weights_changed_under_the_same_name(tmp_path):
    args, path, out, cache = _compared_tiny_gan(tmp_path)
    first = json.loads(path.read_text())
    assert first["weights_sha256"]
    first["fidelity"]["fid"] = 123.0  # a marker: kept while the weights are the same
    path.write_text(json.dumps(first))
    assert main(args) == 0
    assert json.loads(path.read_text())["fidelity"]["fid"] == 123.0
    # A report from before hashes were recorded: trusted while the cache holds these weights' samples.
    legacy = json.loads(path.read_text())
    del legacy["weights_sha256"]
    path.write_text(json.dumps(legacy))
    assert main(args) == 0
    assert json.loads(path.read_text())["fidelity"]["fid"] == 123.0
    torch.manual_seed(1)  # retrained under the same name: the old report describes other weights
    DFGAN.from_config(TINY_GAN).save_pretrained(tmp_path / "gan")
    assert main(args) == 0
    again = json.loads(path.read_text())
    assert again["fidelity"]["fid"] != 123.0 and again["weights_sha256"] != first["weights_sha256"]
