"""GLIDE's comparison on Shapes: classifier-free guidance vs CLIP guidance vs both, pass rate against time.

    python bench/clip_guidance.py --model shapes-imagen --scales 0 3 10 30 --tune-n 64 --n 200 --out reports/clip-guidance
    python bench/clip_guidance.py --model shapes-ldm-f8 --scales 0 3 10 30 --tune-n 64 --n 200 --out reports/clip-guidance

GLIDE (Nichol et al., 2021) found classifier-free guidance better than CLIP guidance, by people's
judgement and by CLIP score alike (the latter flattered CLIP guidance, which optimises that score).
Here the judge is the exact Shapes scorer, which no guide ever sees.

1. Tune: the CLIP guidance scale is chosen on `train` prompts (never on the test prompts), once with
   classifier-free guidance off (guidance 1) and once with the model's own guidance on: the scale with the
   best pass rate on the first `--tune-n` train prompts.
2. Compare on the first `--n` prompts of `test` and `test-novel` (one sample per prompt, seed = index):
   no guidance (guidance 1), classifier-free guidance only (the model's default scale), CLIP guidance only
   (at its tuned scale), and both. Seconds per image are measured in the same run, at batch 50.

The guide: for a pixel cascade, a noise-aware CLIP reading x_t (`trilemma.clip.noise_aware`, GLIDE's);
for a latent model, the CLIP read on the decoded x0 prediction (`trilemma.diffusion.guidance`). Cells are
cached in OUT/cells.json (an interrupted run resumes), the write-up is OUT/<model>.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trilemma  # noqa: E402
from trilemma.eval.evaluate import score_samples  # noqa: E402
from trilemma.shapes.export import test_prompts  # noqa: E402
from trilemma.shapes.scorer import SCORER_VERSION  # noqa: E402


def cell(model, split: str, n: int, batch: int = 50, **options) -> dict:
    prompts = test_prompts(split, n)
    images, t0 = [], time.perf_counter()
    for start in range(0, n, batch):
        images += model.generate(prompts[start:start + batch], seed=start, **options)
    seconds = time.perf_counter() - t0
    summary = score_samples(prompts, images)
    return {"pass_rate": summary["overall"]["pass_rate"], "seconds_per_image": seconds / n,
            "by_category": {k: v["pass_rate"] for k, v in summary.items() if isinstance(v, dict) and "pass_rate" in v}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 3.0, 10.0, 30.0])
    ap.add_argument("--tune-n", type=int, default=64)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--splits", nargs="+", default=["test", "test-novel"])
    ap.add_argument("--time", type=int, default=0, metavar="B",
                    help="also time each arm on a batch of B test prompts, back to back (run on an idle machine)")
    ap.add_argument("--guidance-clip", default=None, help="the guiding CLIP (default: the model's default)")
    ap.add_argument("--out", type=Path, default=Path("reports/clip-guidance"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cells.json"
    cells = json.loads(path.read_text()) if path.exists() else {}
    model = trilemma.load(args.model)
    name = Path(args.model).name
    cfg_scale = float(model.config.guidance_scale)
    extra = {"guidance_clip": args.guidance_clip} if args.guidance_clip else {}

    def get(key: str, split: str, n: int, **options) -> dict:
        full = f"{name}|{key}|{split}|{n}|{json.dumps(extra, sort_keys=True)}"
        if full not in cells:
            cells[full] = cell(model, split, n, **options, **extra)
            cells[full]["scorer_version"] = SCORER_VERSION
            fresh = json.loads(path.read_text()) if path.exists() else {}
            fresh.update(cells)
            path.write_text(json.dumps(fresh, indent=2) + "\n")
            print(full, round(cells[full]["pass_rate"], 3), f"{cells[full]['seconds_per_image']:.3f} s/img", flush=True)
        return cells[full]

    # 1. Tune the CLIP guidance scale on train prompts, with and without classifier-free guidance.
    tuned = {}
    for label, g in (("clip only", 1.0), ("both", cfg_scale)):
        rates = {s: get(f"tune g={g} clip={s}", "train", args.tune_n, guidance_scale=g,
                        **({"clip_guidance": s} if s else {}))["pass_rate"] for s in args.scales}
        positive = {s: r for s, r in rates.items() if s > 0}
        tuned[label] = max(positive, key=lambda s: (positive[s], -s))  # ties: the smaller scale
    # 2. The four arms on test and test-novel.
    arms = {"no guidance": {"guidance_scale": 1.0},
            f"classifier-free only (w = {cfg_scale:g})": {"guidance_scale": cfg_scale},
            f"CLIP only (scale {tuned['clip only']:g})": {"guidance_scale": 1.0, "clip_guidance": tuned["clip only"]},
            f"both (w = {cfg_scale:g}, CLIP {tuned['both']:g})": {"guidance_scale": cfg_scale, "clip_guidance": tuned["both"]}}
    if args.time:
        # Seconds per image of each arm measured back to back in this process, on an otherwise idle machine: the
        # cells' own times were taken while other jobs shared the cores, and are not comparable with each other.
        prompts = test_prompts("test", args.time)
        timing = {}
        for arm, options in arms.items():
            model.generate(prompts[:2], seed=0, **options, **extra)  # warm-up (loads the guiding CLIP)
            t0 = time.perf_counter()
            model.generate(prompts, seed=0, **options, **extra)
            timing[arm] = (time.perf_counter() - t0) / len(prompts)
        fresh = json.loads(path.read_text()) if path.exists() else {}
        fresh[f"{name}|timing|{args.time}|{torch.get_num_threads()} threads"] = timing
        path.write_text(json.dumps(fresh, indent=2) + "\n")
        cells.update(fresh)
    timing = next((v for k, v in cells.items() if k.startswith(f"{name}|timing|")), None)
    timing_key = next((k for k in cells if k.startswith(f"{name}|timing|")), None)
    rows = {}
    for arm, options in arms.items():
        key = "arm " + json.dumps(options, sort_keys=True)
        rows[arm] = {split: get(key, split, args.n, **options) for split in args.splits}
    command = "python bench/clip_guidance.py " + " ".join(sys.argv[1:])
    lines = [f"## {name}", "", f"Regenerate: `{command}` (scorer v{SCORER_VERSION}, {torch.get_num_threads()} threads)", "",
             f"Tuned on the first {args.tune_n} `train` prompts (pass rate by CLIP guidance scale):", "",
             "| CLIP scale | " + " | ".join(f"{s:g}" for s in args.scales) + " |", "| --- |" + " --- |" * len(args.scales)]
    for label, g in (("clip only", 1.0), ("both", cfg_scale)):
        lines.append(f"| w = {g:g} | " + " | ".join(
            f"{cells[f'{name}|tune g={g} clip={s}|train|{args.tune_n}|{json.dumps(extra, sort_keys=True)}']['pass_rate']:.3f}"
            for s in args.scales) + " |")
    when = (f"s/image: batch {timing_key.split('|')[2]}, each arm back to back on an idle machine, "
            f"{timing_key.split('|')[3]}") if timing else "s/image: from the cells (machine shared with other jobs)"
    lines += ["", f"First {args.n} prompts of each split, one sample per prompt; {when}:", "",
              "| arm | `test` | `test-novel` | position (`test`) | s/image |", "| --- | --- | --- | --- | --- |"]
    for arm, r in rows.items():
        novel = f"{r['test-novel']['pass_rate']:.3f}" if "test-novel" in r else "not run"
        seconds = timing[arm] if timing else r["test"]["seconds_per_image"]
        lines.append(f"| {arm} | {r['test']['pass_rate']:.3f} | {novel} | "
                     f"{r['test']['by_category'].get('position', float('nan')):.3f} | {seconds:.3f} |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
