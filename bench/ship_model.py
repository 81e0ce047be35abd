"""Package a trained model for shipping: fp16 safetensors + config, and its measured scores.

    python bench/ship_model.py runs/shapes-ldm/final shapes-ldm --scores reports/shapes-ldm-scores.json \
        --curve reports/shapes-ldm-curve.png --grid reports/shapes-ldm-samples.png

Writes trilemma/weights/NAME/{config.json, model.safetensors, scores.json, training.json,
training_curve.png, samples.png}. The model card (README.md) beside them is written by hand
from these figures.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch

from trilemma.checkpoint import replace_extra_file
from trilemma.model import TrainableModel
from trilemma.registry import WEIGHTS_DIR


def card_scores(report: dict) -> dict:
    """The pass rates a card's scores.json carries, from a bench/score_model.py report."""
    return {"test": report["splits"]["test"]["summary"]["overall"]["pass_rate"],
            "test-novel": report["splits"]["test-novel"]["summary"]["overall"]["pass_rate"],
            "n_per_split": report["n"], "scorer_version": report.get("scorer_version", 1),
            "per_category": {s: {k: v["pass_rate"] for k, v in r["summary"].items() if k != "by_pairs"}
                             for s, r in report["splits"].items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("name")
    ap.add_argument("--scores", help="a report from bench/score_model.py (a Shapes model)")
    ap.add_argument("--heldout", metavar="REPORT", help="a model of another data set: the report.json of "
                                                        "`trilemma evaluate --data HELD_OUT`")
    ap.add_argument("--benchmark", default="shapes", help="with --heldout: the data set's name (e.g. emoji)")
    ap.add_argument("--curve")
    ap.add_argument("--grid")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a sampling default of the shipped config, the value as JSON (e.g. --set thresholding='\"static\"'), "
                         "when the scores were measured with it")
    ap.add_argument("--training-minutes", type=float,
                    help="total training minutes over every run that made the model (default: the last run's)")
    ap.add_argument("--scores-only", action="store_true",
                    help="only rewrite the shipped model's scores.json from --scores (a re-scoring), keeping its training minutes")
    args = ap.parse_args()
    if (args.scores is None) == (args.heldout is None):
        raise SystemExit("give --scores (a Shapes model) or --heldout (a model of another data set)")
    if args.scores_only:
        dest = WEIGHTS_DIR / args.name
        old = json.loads((dest / "scores.json").read_text())
        scores = {**old, **card_scores(json.loads(Path(args.scores).read_text()))}  # training minutes kept
        replace_extra_file(dest, "scores.json", scores)  # config.json keeps its sha256
        print(dest, {k: scores[k] for k in ("test", "test-novel", "scorer_version")})
        return
    model = TrainableModel.from_pretrained(args.source)
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(model.config, key):
            raise SystemExit(f"{type(model).__name__} has no config field {key!r}")
        setattr(model.config, key, json.loads(value))
    dest = WEIGHTS_DIR / args.name
    training = json.loads((Path(args.source) / "training.json").read_text())
    if args.heldout:
        report = json.loads(Path(args.heldout).read_text())
        measured = {"benchmark": args.benchmark, "heldout": {"n": report["n"], "features": report["features"],
                                                             **report["generated"], "references": report["references"]}}
    else:
        measured = card_scores(json.loads(Path(args.scores).read_text()))
    scores = {"parameters": model.num_parameters(), **measured,
              "training_minutes": args.training_minutes or round(training["train_seconds"] / 60, 1)}
    card = dest / "README.md"
    kept_card = card.read_text() if card.is_file() else None
    model.save_pretrained(dest, dtype=torch.float16, extra_files={"scores.json": scores, "training.json": training})
    if kept_card:
        card.write_text(kept_card)
    for src, name in ((args.curve, "training_curve.png"), (args.grid, "samples.png")):
        if src:
            shutil.copy(src, dest / name)
    print(dest, json.dumps(scores))


if __name__ == "__main__":
    main()
