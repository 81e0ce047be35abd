"""CLIP score in `trilemma evaluate` and `compare`, FID on CLIP features, and shipped CLIPs in `trilemma models`."""

import json
import math
import shutil

import pytest
from PIL import Image

import trilemma.eval.evaluate as ev
from trilemma.cli import main

N = 8  # precision/recall need more than k images per set


def _no_default_clip(monkeypatch):
    monkeypatch.setattr(ev, "default_clip", lambda: None)  # as before shapes-clip is shipped


def test_evaluate_reports_clip_score_and_fid_on_clip_features(tmp_path, monkeypatch, tiny_ldm_dir, tiny_clip_dir):
    from trilemma.clip import clip_score

    cache = tmp_path / "cache"
    report = ev.evaluate(str(tiny_ldm_dir), n=N, out=tmp_path / "eval", cache=cache, k=3, progress=False,
                         with_cost=False, clip=str(tiny_clip_dir))
    cs = report["clip_score"]
    assert math.isfinite(cs["value"]) and 0.0 <= cs["value"] <= 100.0 and cs["n"] == N
    assert cs["clip"] == str(tiny_clip_dir.resolve())
    import trilemma

    folder = ev.sample_folder(trilemma.load(str(tiny_ldm_dir)), str(tiny_ldm_dir), "test", cache)
    images = [Image.open(folder / f"{i:06d}.png").convert("RGB") for i in range(N)]
    assert cs["value"] == pytest.approx(clip_score(images, ev.test_prompts("test", N), tiny_clip_dir), abs=1e-4)
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["clip_score"]["value"] == pytest.approx(cs["value"])
    assert "CLIP score: " in (tmp_path / "eval" / "report.md").read_text()

    on_clip = ev.evaluate(str(tiny_ldm_dir), n=N, cache=cache, k=3, progress=False, with_cost=False,
                          clip=str(tiny_clip_dir), features="clip")
    assert on_clip["features"] == f"clip:{tiny_clip_dir.resolve()}"
    f = on_clip["fidelity"]
    assert math.isfinite(f["fid"]) and f["fid"] != report["fidelity"]["fid"] and 0.0 <= f["precision"] <= 1.0

    _no_default_clip(monkeypatch)  # no CLIP asked for and none shipped: null, and the markdown says n/a
    bare = ev.evaluate(str(tiny_ldm_dir), n=N, cache=cache, k=3, progress=False, with_cost=False)
    assert bare["clip_score"] is None and "CLIP score: n/a" in ev.report_markdown(bare)


def test_compare_adds_clip_score_to_a_cached_report_and_the_floor(tmp_path, monkeypatch, tiny_ldm_dir, tiny_clip_dir):
    out, cache = tmp_path / "cmp", tmp_path / "cache"
    _no_default_clip(monkeypatch)
    # A cached report from before CLIP scores (and without cost, which compare must not measure again).
    report = ev.evaluate(str(tiny_ldm_dir), n=N, out=out / tiny_ldm_dir.name, cache=cache, progress=False, with_cost=False)
    assert report["clip_score"] is None
    report["fidelity"]["fid"] = 123.0
    report["cost"] = {"parameters": 1e6, "seconds_per_image_batch1": 1.0, "images_per_second_batch1": 1.0, "best_batch": 8,
                      "images_per_second_best": 2.0, "function_evaluations_per_image": 3, "peak_memory_mib": 10.0,
                      "peak_memory_kind": "made up"}
    (out / tiny_ldm_dir.name / "report.json").write_text(json.dumps(report))
    ev.compare([str(tiny_ldm_dir)], out, n=N, cache=cache, grid_prompts=2, progress=False, clip=str(tiny_clip_dir))
    new = json.loads((out / tiny_ldm_dir.name / "report.json").read_text())
    assert new["fidelity"]["fid"] == 123.0 and new["cost"] == report["cost"]  # kept, not measured again
    assert 0.0 <= new["clip_score"]["value"] <= 100.0
    table = (out / "COMPARE.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    column = header.split("|").index(" CLIP score ")
    row = next(line for line in table.splitlines() if line.startswith(f"| {tiny_ldm_dir.name} |"))
    floor = next(line for line in table.splitlines() if line.startswith("| real renders"))
    assert float(row.split("|")[column]) == pytest.approx(new["clip_score"]["value"], abs=0.01)
    floor_json = json.loads((out / "floor.json").read_text())
    assert float(floor.split("|")[column]) == pytest.approx(floor_json["clip_score"]["value"], abs=0.01)
    assert "--clip" in table and f"with `{tiny_clip_dir.resolve()}`" in table


def test_cli_refuses_a_bad_clip_in_one_line(tmp_path, capsys, monkeypatch, tiny_ldm_dir):
    for command in (["evaluate", "--model", str(tiny_ldm_dir)], ["compare", str(tiny_ldm_dir)]):
        assert main([*command, "--clip", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"),
                     "--cache", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CLIP at" in err and err.startswith(f"trilemma {command[0]}: error:")
    _no_default_clip(monkeypatch)
    assert main(["evaluate", "--model", str(tiny_ldm_dir), "--features", "clip", "--cache", str(tmp_path / "cache")]) == 2
    assert "--features clip needs a CLIP" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before drawing anything


def test_models_lists_shipped_clips(tmp_path, capsys, monkeypatch, tiny_clip_dir):
    import trilemma.registry as registry

    assert main(["models"]) == 0
    weights = tmp_path / "weights"
    shutil.copytree(tiny_clip_dir, weights / "shapes-clip")
    shutil.copytree(tiny_clip_dir, weights / "other-clip")  # no scores.json
    hard = {"color": {"overall": 0.9}, "count": {"overall": 0.7}}
    (weights / "shapes-clip" / "scores.json").write_text(json.dumps(
        {"parameters": 2e6, "test": {"text_to_image_recall@1": 0.81, "image_to_text_recall@1": 0.79, "hard_negative": hard},
         "test-novel": {"text_to_image_recall@1": 0.5, "image_to_text_recall@1": 0.4, "hard_negative": hard}}))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    capsys.readouterr()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shapes = next(line for line in lines if line.startswith("shapes-clip: clip / CLIP"))
    assert "2.0M parameters" in shapes and "0.810" in shapes and "test-novel:" in shapes and "color 0.900" in shapes
    assert any(line.startswith("other-clip: clip / CLIP") and "not measured" in line for line in lines)
