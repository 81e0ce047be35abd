"""CLIP reranking (trilemma.clip.rerank, `generate --rerank`, bench/clip_rerank.py) on a tiny model and a tiny CLIP."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

PROMPTS = ["a red circle", "two blue squares above a green triangle", "a small yellow square"]
SEED = 5


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def _assert_clean_error(rc, out, err, *words):
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def model(tiny_ldm_dir):
    import trilemma

    return trilemma.load(tiny_ldm_dir)


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir):
    from trilemma.clip import load_clip

    return load_clip(tiny_clip_dir)


@pytest.fixture(scope="module")
def candidates(model):
    """Candidate j of every prompt as plain generation draws it, at the documented seeds (j = 0..3)."""
    from trilemma.clip.rerank import CANDIDATE_STRIDE

    return [model.generate(PROMPTS, seed=SEED + j * CANDIDATE_STRIDE, steps=2) for j in range(4)]


def test_one_candidate_is_plain_generation(model, scorer, candidates):
    from trilemma.clip.rerank import generate_reranked

    images, choices = generate_reranked(model, PROMPTS, seed=SEED, candidates=1, clip=scorer, steps=2)
    assert all(_same(a, b) for a, b in zip(images, candidates[0]))
    assert [c["candidate"] for c in choices] == [0, 0, 0]
    assert [c["candidate_seed"] for c in choices] == [SEED, SEED + 1, SEED + 2]


def test_choice_is_clip_argmax_of_the_candidates_at_the_documented_seeds(model, scorer, candidates, tiny_clip_dir):
    from trilemma.clip.rerank import CANDIDATE_STRIDE, generate_reranked

    # The CLIP as a folder, not a scorer: the same CLIP, loaded once.
    images, choices = generate_reranked(model, PROMPTS, seed=SEED, candidates=3, clip=str(tiny_clip_dir), steps=2)
    scores = np.stack([scorer.similarity(candidates[j], PROMPTS).numpy() for j in range(3)], axis=1)  # (prompt, j)
    for k in range(len(PROMPTS)):
        j = int(np.argmax(scores[k]))
        assert choices[k]["candidate"] == j
        assert choices[k]["candidate_seed"] == SEED + k + j * CANDIDATE_STRIDE
        assert choices[k]["clip_scores"] == pytest.approx(scores[k].tolist(), abs=1e-6)
        assert choices[k]["clip_score"] == pytest.approx(scores[k].max(), abs=1e-6)
        assert _same(images[k], candidates[j][k])


def test_candidates_are_nested(model, scorer, candidates):
    from trilemma.clip.rerank import best_candidate, generate_reranked

    two = generate_reranked(model, PROMPTS, seed=SEED, candidates=2, clip=scorer, steps=2)
    four = generate_reranked(model, PROMPTS, seed=SEED, candidates=4, clip=scorer, steps=2)
    for k in range(len(PROMPTS)):
        # The first two of N=4's candidates are N=2's; the N=2 choice is the best of those two.
        assert four.choices[k]["clip_scores"][:2] == pytest.approx(two.choices[k]["clip_scores"], abs=1e-6)
        j = best_candidate(four.choices[k]["clip_scores"][:2])
        assert two.choices[k]["candidate"] == j and _same(two.images[k], candidates[j][k])
        assert _same(four.images[k], candidates[four.choices[k]["candidate"]][k])
    assert any(c["candidate"] for c in four.choices)  # not vacuous: the tiny CLIP does not always keep candidate 0


@pytest.mark.parametrize("n", [0, 65, 2.5, "3"])
def test_candidates_out_of_range_is_one_value_error(model, scorer, n):
    from trilemma.clip.rerank import generate_reranked

    with pytest.raises(ValueError, match=r"candidates must be a whole number in \[1, 64\]"):
        generate_reranked(model, PROMPTS, candidates=n, clip=scorer)


def test_cli_rerank_writes_choices_and_resumes(tiny_ldm_dir, tiny_clip_dir, tmp_path, capsys):
    from trilemma.clip.rerank import CANDIDATE_STRIDE

    out = tmp_path / "o"
    args = ["generate", *PROMPTS[:2], "--model", tiny_ldm_dir, "--steps", "2", "--seed", "3", "--batch-size", "1",
            "--rerank", "2", "--clip", tiny_clip_dir, "--out", out]
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [3, 4] and [r["text"] for r in rows] == PROMPTS[:2]
    for k, r in enumerate(rows):
        assert r["rerank"] == 2 and r["candidate"] in (0, 1)
        assert r["candidate_seed"] == 3 + k + r["candidate"] * CANDIDATE_STRIDE
        assert isinstance(r["clip_score"], float)
    # As a killed run leaves it: the first image named, the second not; --resume draws the second again.
    second = (out / "000001.png").read_bytes()
    (out / "metadata.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (out / "000001.png").unlink()
    rc, stdout, err = run_cli(*args, "--resume")
    assert rc == 0 and "1 were there already" in stdout, err
    assert [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()] == rows
    assert (out / "000001.png").read_bytes() == second
    # Resuming with another --rerank would mix images chosen among different numbers of candidates (in-process:
    # main() is what the command runs).
    from trilemma.cli import main

    assert main([str(a) for a in args[:-4]] + ["--rerank", "3", "--clip", str(tiny_clip_dir), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "was written with --rerank 2" in err, err


@pytest.mark.parametrize("extra, words", [
    (["--rerank", "0"], ["--rerank", "[1, 64]"]),
    (["--rerank", "2", "--clip", "/nonexistent"], ["no CLIP at /nonexistent"]),
    (["--clip", "/nonexistent"], ["give --rerank N"]),
])
def test_cli_rerank_errors_are_one_line(tiny_ldm_dir, tmp_path, extra, words):
    _assert_clean_error(*run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--out", tmp_path / "o", *extra), *words)
    assert not (tmp_path / "o").exists()


def test_benchmark_core_on_a_tiny_model(model, scorer, tmp_path):
    """bench/clip_rerank.py's core: the choice it tabulates for N is what generate_reranked writes, and a rerun
    reads the cached candidates."""
    from trilemma.clip.rerank import generate_reranked
    from trilemma.shapes.export import test_prompts

    spec = importlib.util.spec_from_file_location("clip_rerank", Path(__file__).resolve().parents[1] / "bench" / "clip_rerank.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prompts = test_prompts("test", 2)
    r = bench.benchmark_model(model, "tiny", prompts, scorer, ns=(1, 2), cache=tmp_path, log=lambda m: None, steps=2)
    assert set(r["rates"]) == {"1", "2"}
    for n in ("1", "2"):
        rates = r["rates"][n]
        assert 0 <= rates["clip_choice"]["overall"] <= rates["oracle"]["overall"] <= 1
    assert r["rates"]["1"]["clip_choice"]["overall"] == r["rates"]["1"]["oracle"]["overall"]
    acc = r["clip_pairwise"]["overall"]
    assert acc["pairs"] == sum(sum(row) * (2 - sum(row)) for row in r["passed"])
    assert acc["accuracy"] is None or 0 <= acc["accuracy"] <= 1
    api = generate_reranked(model, prompts, seed=0, candidates=2, clip=scorer, steps=2)
    for k in range(2):
        assert r["clip"][k] == pytest.approx(api.choices[k]["clip_scores"], abs=1e-6)
        assert _same(r["candidates"][k][api.choices[k]["candidate"]], api.images[k])
    again = bench.benchmark_model(model, "tiny", prompts, scorer, ns=(1, 2), cache=tmp_path, log=lambda m: None, steps=2)
    assert again["passed"] == r["passed"]
    timing = bench.time_reranking(model, scorer, prompts[:1], ns=(1, 2), clip_repeats=1, low_repeats=1, steps=2)
    assert timing["per_N"]["1"]["how"] == timing["per_N"]["2"]["how"] == "measured"
    assert bench.contact_sheet(prompts, r["candidates"], r["clip"], r["passed"], n=2).size[0] > 0
