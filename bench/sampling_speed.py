"""Images per second of several models, measured in the same run, as ratios against the first.

    python bench/sampling_speed.py shapes-ldm-f8 shapes-dfgan --out reports/sampling-speed.json

Each model generates the same prompt at batch 1 and at a larger batch; the
median of several timed runs (after a warm-up) gives images per second. The
ratio column is each model's images per second over the first model's, at the
same batch: the seeds' claim that GAN sampling is about 100x faster than latent
diffusion is read off it.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds  # noqa: E402

import trilemma

PROMPT = "a small purple triangle and a large cyan square"


def images_per_second(model, batch: int, repeats: int) -> float:
    return batch / median_seconds(lambda: model.generate([PROMPT] * batch, seed=0), repeats)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = {}
    for name in args.models:
        model = trilemma.load(name)
        rows[name] = {"parameters": model.num_parameters(),
                      **{f"batch {b}": round(images_per_second(model, b, args.repeats), 3) for b in args.batches}}
    base = rows[args.models[0]]
    for row in rows.values():
        for b in args.batches:
            row[f"ratio batch {b}"] = round(row[f"batch {b}"] / base[f"batch {b}"], 1)
    report = {"baseline": args.models[0], "threads": 2, "prompt": PROMPT, "images_per_second": rows}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
