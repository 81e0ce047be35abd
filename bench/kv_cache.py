"""Autoregressive generation with and without the KV cache, measured in the same run.

    python bench/kv_cache.py --model shapes-dalle --out reports/kv-cache.json

Without the cache each new token re-runs the transformer over the whole
sequence so far (quadratic in length); with it, only over the new token.
Both draw the same tokens (the suite checks it), so only time differs.
Medians of several runs at batch 1 and batch 16; the ratio is cached / uncached
images per second.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds  # noqa: E402

import trilemma


def images_per_second(model, batch: int, use_cache: bool, repeats: int) -> float:
    prompts = ["a red circle to the left of a blue square"] * batch
    return batch / median_seconds(lambda: model.generate(prompts, seed=0, use_cache=use_cache), repeats)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-dalle")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = trilemma.load(args.model)
    rows = {}
    for batch in args.batches:
        cached = images_per_second(model, batch, True, args.repeats)
        full = images_per_second(model, batch, False, args.repeats)
        rows[f"batch {batch}"] = {"with_cache_img_per_s": round(cached, 3), "without_cache_img_per_s": round(full, 3),
                                  "speedup": round(cached / full, 2)}
    report = {"model": args.model, "image_tokens": model.image_length, "text_tokens": model.text_length,
              "threads": torch.get_num_threads(), "rows": rows}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
