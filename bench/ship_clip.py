"""Package a trained CLIP (or noise-aware CLIP) for shipping: fp16 safetensors, its config, its measured scores.

    python bench/ship_clip.py runs/shapes-clip/final shapes-clip --scores reports/shapes-clip-eval.json

Writes trilemma/weights/NAME/{config.json, model.safetensors, scores.json, training.json} (and, for a CLIP,
the tokenizer and image-processor files transformers reads). The model card (README.md) is written by hand
from these figures.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trilemma.model import TrainableModel  # noqa: E402
from trilemma.registry import WEIGHTS_DIR  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("name")
    ap.add_argument("--scores", help="a JSON report of its measured scores (bench/clip_eval.py)")
    ap.add_argument("--training-minutes", type=float, help="total training minutes (default: the run's own)")
    args = ap.parse_args()
    model = TrainableModel.from_pretrained(args.source)
    training = json.loads((Path(args.source) / "training.json").read_text())
    minutes = args.training_minutes or round(training["train_seconds"] / 60, 1)
    scores = json.loads(Path(args.scores).read_text()) if args.scores else {}
    scores.update(parameters=sum(p.numel() for n, p in model.checkpoint_tensors().items()), training_minutes=minutes)
    dest = WEIGHTS_DIR / args.name
    model.save_pretrained(dest, dtype=torch.float16, extra_files={"scores.json": scores, "training.json": training})
    size = (dest / "model.safetensors").stat().st_size / 1e6
    print(f"{dest}: {size:.1f} MB, {scores['parameters'] / 1e6:.2f}M parameters, {minutes} min")


if __name__ == "__main__":
    main()
