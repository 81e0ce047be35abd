"""Pass rate against sampling time for each sampler at 10, 25 and 50 steps.

    python bench/samplers.py --model shapes-ldm-f8 --n 200 --out reports/samplers

The sampler is one `generate` option (`sampler=`): DDPM ancestral, DDIM (eta
0) and DPM-Solver++ (2M), all diffusers schedulers driven by the one sampling
loop. Each cell scores one sample per prompt on the first N canonical `test`
prompts (seed = index). Its time is measured apart from the scoring run, on a
batch of `--timing-batch` images, the median of `--repeats` runs after a
warm-up, so that scoring can be interrupted and resumed from OUT/cells.json
without mixing timings from different machine loads. Seconds per image are
also given as a ratio against DPM-Solver++ at 25 steps, timed in the same run.
Writes OUT/SAMPLERS.md and OUT/samplers.png.
"""

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from score_model import score_split  # noqa: E402
from timing import median_seconds  # noqa: E402

import trilemma  # noqa: E402
from trilemma.shapes.export import test_prompts  # noqa: E402

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
STEPS = (10, 25, 50)
BASELINE = ("dpmsolver++", 25)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-ldm-f8")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--timing-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cells_path = args.out / "cells.json"
    cells = json.loads(cells_path.read_text()) if cells_path.exists() else {}
    model = trilemma.load(args.model)

    for sampler in SAMPLERS:
        for steps in STEPS:
            key = f"{args.model}|{sampler}|{steps}|{args.n}"
            if key in cells:
                continue
            summary, _, _ = score_split(model, "test", args.n, sampler=sampler, steps=steps)
            cells[key] = {k: v["pass_rate"] for k, v in summary.items() if k != "by_pairs"}
            cells_path.write_text(json.dumps(cells, indent=2) + "\n")
            print(key, cells[key]["overall"], flush=True)

    # Timings last and all together, so every ratio compares runs under the same machine load.
    prompts = test_prompts("test", args.timing_batch)
    seconds = {(s, k): median_seconds(lambda s=s, k=k: model.generate(prompts, seed=0, sampler=s, steps=k), args.repeats)
               / args.timing_batch for s in SAMPLERS for k in STEPS}
    base = seconds[BASELINE]

    rows = ["| sampler | steps | pass rate | single | pair | count | position | s / image | time vs DPM-Solver++ 25 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for sampler in SAMPLERS:
        xs, ys = [], []
        for steps in STEPS:
            c = cells[f"{args.model}|{sampler}|{steps}|{args.n}"]
            sec = seconds[(sampler, steps)]
            rows.append(f"| {sampler} | {steps} | **{c['overall']:.3f}** | {c['single']:.3f} | {c['pair']:.3f} | "
                        f"{c['count']:.3f} | {c['position']:.3f} | {sec:.3f} | {sec / base:.2f}x |")
            xs.append(sec)
            ys.append(c["overall"])
        ax.plot(xs, ys, marker="o", label=sampler)
        for x, y, steps in zip(xs, ys, STEPS):
            ax.annotate(str(steps), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="seconds per image (batch %d, %d threads)" % (args.timing_batch, args.threads),
           ylabel=f"pass rate on test (n={args.n})", title=f"{args.model}: samplers at 10 / 25 / 50 steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "samplers.png", dpi=120)
    mean = sum(cells[f"{args.model}|{s}|{k}|{args.n}"]["overall"] for s in SAMPLERS for k in STEPS) / len(SAMPLERS) / len(STEPS)
    stderr = (mean * (1 - mean) / args.n) ** 0.5
    text = (f"# Samplers on `{args.model}`\n\n"
            f"`python bench/samplers.py --model {args.model} --n {args.n} --out {args.out}`: one sample per prompt "
            f"on the first {args.n} `test` prompts, pass rates from the scorer; seconds per image at batch "
            f"{args.timing_batch}, median of {args.repeats} runs after a warm-up, {args.threads} CPU threads, "
            f"all timed in one run. The standard error of one pass rate is about {stderr:.3f} (n = {args.n}): "
            f"differences smaller than twice that are noise.\n\n" + "\n".join(rows) + "\n\n![pass rate against seconds per image](samplers.png)\n")
    (args.out / "SAMPLERS.md").write_text(text)
    (args.out / "timings.json").write_text(json.dumps({f"{s}|{k}": v for (s, k), v in seconds.items()}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
