"""Score a model on the Shapes benchmark: one sample per prompt, the scorer's pass rates.

    python bench/score_model.py --model shapes-ldm --n 500 --out reports/shapes-ldm-scores.json

Generates for the canonical prompts of the first N scenes of `test` and of
`test-novel` (seed 0 + index), scores each image, and writes the summary per
split, category, seen/held-out pairs, plus the generation time. With
`--cache reports/eval-cache` the samples are kept (and shared with `trilemma
evaluate`), so re-scoring after a scorer change reads them back.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import trilemma
from trilemma.shapes.export import test_prompts
from trilemma.eval.evaluate import cached_samples, score_samples
from trilemma.shapes.scorer import SCORER_VERSION
from trilemma.grid import image_grid


def score_split(model, split: str, n: int, batch_size: int = 100, cache: Path | None = None, name: str | None = None,
                **options) -> tuple[dict, float | None, list]:
    """Pass rates on the first n prompts of a split, and the seconds generation took. With a cache folder the
    samples are read from (or kept in) it, and no time is reported (some or all were drawn before)."""
    prompts = test_prompts(split, n)
    if cache is not None:
        _, images = cached_samples(model, name, split, n, cache, progress=False, **options)
        seconds = None
    else:
        t0 = time.perf_counter()
        images = []
        for start in range(0, n, batch_size):
            images += model.generate(prompts[start:start + batch_size], seed=start, **options)
        seconds = time.perf_counter() - t0
    return score_samples(prompts, images), seconds, list(zip(prompts, images))


def parse_sets(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", help="also write a grid of the first 32 test samples here")
    ap.add_argument("--cache", type=Path, help="keep samples here (e.g. reports/eval-cache) and reuse them: re-scoring "
                                               "after a scorer change does not draw them again")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance-scale", type=float)
    ap.add_argument("--sampler")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other generate() option, the value as JSON (e.g. --set sr_guidance_scale=1.0)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = trilemma.load(args.model)
    options = {k: v for k, v in {"steps": args.steps, "guidance_scale": args.guidance_scale, "sampler": args.sampler}.items() if v is not None}
    options.update(parse_sets(args.set))
    report = {"model": args.model, "n": args.n, "options": options, "parameters": model.num_parameters(),
              "scorer_version": SCORER_VERSION, "splits": {}}
    for split in ("test", "test-novel"):
        summary, seconds, pairs = score_split(model, split, args.n, cache=args.cache, name=args.model, **options)
        report["splits"][split] = {"summary": summary, "generate_seconds": None if seconds is None else round(seconds, 1),
                                   "images_per_second": None if seconds is None else round(args.n / seconds, 2)}
        print(split, json.dumps({k: v["pass_rate"] for k, v in summary.items() if k != "by_pairs"}), flush=True)
        if args.grid and split == "test":
            image_grid([im for _, im in pairs[:32]], [p for p, _ in pairs[:32]], cols=8).save(args.grid)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
