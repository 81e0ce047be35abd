"""Imagen's three claims, measured on Shapes (Saharia et al., 2022, sec. 4.4).

    python bench/imagen_ablations.py guidance --model shapes-imagen --n 200 --out reports/imagen-ablations
    python bench/imagen_ablations.py encoder --trained RUN_A/final --frozen RUN_B/final --n 200 --out reports/imagen-ablations
    python bench/imagen_ablations.py augmentation --with RUN_A/final --without RUN_B/final --n 200 --out reports/imagen-ablations

(a) `encoder`: two cascades trained alike for the same minutes, one with the
    jointly trained text transformer and one with a frozen pretrained encoder;
    pass rates on `test` and `test-novel`.
(b) `guidance`: one cascade sampled at guidance 1, 3, 5, 10, 20 with no,
    static and dynamic thresholding, the last both uncapped (Imagen's
    pseudocode, percentile 0.995 in every stage) and capped as DeepFloyd IF
    runs it (percentile 0.95, s <= 1.5 in the base stage, SR stages static);
    pass rates on `test`. Samples are kept in reports/eval-cache, so a
    changed scorer re-scores them without drawing them again.
(c) `augmentation`: the same base stage under an SR stage trained with and
    one trained without noise conditioning augmentation; pass rates on `test`
    (the first also sampled with its input un-noised, level 0).

Every cell is the scorer's pass rate on the first N canonical prompts of the
split, one sample per prompt (seed = index). Cells are cached in
OUT/cells.json, so an interrupted run resumes where it stopped. Writes
OUT/ABLATIONS.md (the tables) and OUT/<part>.png.
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

import trilemma  # noqa: E402
from trilemma.shapes.scorer import SCORER_VERSION  # noqa: E402

SCALES = (1.0, 3.0, 5.0, 10.0, 20.0)
# generate() options of each thresholding variant.
MODES = {"none": {"thresholding": "none"},
         "static": {"thresholding": "static"},
         "dynamic, uncapped": {"thresholding": "dynamic", "threshold_percentile": 0.995, "threshold_max_value": float("inf")},
         # The cascade's own per-stage caps (the shipped one's are DeepFloyd IF's: 1.5 in the base, 1.0 in SR).
         "dynamic, capped (DeepFloyd IF)": {"thresholding": "dynamic", "threshold_percentile": 0.95, "threshold_max_value": None}}
CACHE = Path("reports/eval-cache")


class Cells:
    """Measured cells, written after each one."""

    def __init__(self, out: Path):
        self.path = out / "cells.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, measure) -> float:
        if key not in self.data:
            value = measure()
            # Re-read before writing: two parts may run side by side and share the file.
            self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
            self.data[key] = value
            self.path.write_text(json.dumps(self.data, indent=2) + "\n")
            print(key, self.data[key], flush=True)
        return self.data[key]


def pass_rate(model, split: str, n: int, **options) -> float:
    summary, _, _ = score_split(model, split, n, **options)
    return summary["overall"]["pass_rate"]


def cell_options(mode: str, scale: float) -> dict:
    return {"guidance_scale": scale, **{k: v for k, v in MODES[mode].items() if v is not None}}


def guidance(args, cells: Cells) -> str:
    model = trilemma.load(args.model)
    table = {m: [cells.get(f"guidance|{args.model}|{m}|{s}|{args.n}|scorer {SCORER_VERSION}", lambda m=m, s=s: pass_rate(
        model, "test", args.n, cache=CACHE, name=args.model, **cell_options(m, s))) for s in SCALES] for m in MODES}
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in MODES:
        ax.plot(SCALES, table[m], marker="o", label=m)
    ax.set(xlabel="guidance scale", ylabel=f"pass rate on test (n={args.n})", title=f"{args.model}: guidance x thresholding",
           xscale="log", ylim=(0, 1))
    ax.set_xticks(SCALES, [f"{s:g}" for s in SCALES])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "guidance.png", dpi=120)
    rows = ["| thresholding | " + " | ".join(f"w = {s:g}" for s in SCALES) + " |", "| --- |" + " --- |" * len(SCALES)]
    rows += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in table[m]) + " |" for m in MODES]
    return (f"## (b) Guidance scale and thresholding\n\n`{args.model}`, {args.n} prompts of `test`, scorer {SCORER_VERSION}. "
            "Uncapped: Imagen's pseudocode, percentile 0.995 in every stage. Capped: DeepFloyd IF's settings, percentile "
            "0.95 and s <= 1.5 in the base stage, SR stages static (s <= 1).\n\n" + "\n".join(rows))


def paired(args, cells: Cells, part: str, names: dict[str, str | tuple[str, dict]], splits: tuple[str, ...]) -> str:
    """One row per label: a model path, or (path, sampling options)."""
    table, paths = {}, {}
    for label, spec in names.items():
        path, options = (spec, {}) if isinstance(spec, str) else spec
        paths[label] = path + "".join(f", {k}={v}" for k, v in options.items())
        model = trilemma.load(path)
        suffix = "".join(f"|{k}={v}" for k, v in options.items())
        table[label] = [cells.get(f"{part}|{path}|{split}|{args.n}{suffix}",
                                  lambda s=split, m=model, o=options: pass_rate(m, s, args.n, **o)) for split in splits]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    width = 0.8 / len(names)
    for k, (label, values) in enumerate(table.items()):
        ax.bar([i + k * width for i in range(len(splits))], values, width, label=label)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(splits))], splits)
    ax.set(ylabel=f"pass rate (n={args.n})", title=part, ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out / f"{part}.png", dpi=120)
    rows = ["| model | " + " | ".join(splits) + " |", "| --- |" + " --- |" * len(splits)]
    rows += [f"| {label} (`{paths[label]}`) | " + " | ".join(f"{v:.3f}" for v in values) + " |" for label, values in table.items()]
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=("guidance", "encoder", "augmentation"))
    ap.add_argument("--model", default="shapes-imagen")
    ap.add_argument("--trained")
    ap.add_argument("--frozen")
    ap.add_argument("--with", dest="with_aug")
    ap.add_argument("--without")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (1 lets two parts run side by side on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cells = Cells(args.out)
    if args.part == "guidance":
        section = guidance(args, cells)
    elif args.part == "encoder":
        if not (args.trained and args.frozen):
            ap.error("encoder needs --trained and --frozen")
        section = "## (a) Frozen pretrained vs jointly trained text encoder\n\n" + paired(
            args, cells, "encoder", {"trained encoder": args.trained, "frozen encoder": args.frozen}, ("test", "test-novel"))
    else:
        if not (args.with_aug and args.without):
            ap.error("augmentation needs --with and --without")
        section = "## (c) Noise conditioning augmentation in the SR stage\n\n" + paired(
            args, cells, "augmentation", {"with augmentation": args.with_aug,
                                          # Sampled without noising its input: is the harm in the sampling noise or the training?
                                          "with augmentation, sampled at level 0": (args.with_aug, {"aug_level": 0.0}),
                                          "without": args.without}, ("test",))
    (args.out / f"{args.part}.md").write_text(section + "\n")
    parts = [p for p in ("encoder", "guidance", "augmentation") if (args.out / f"{p}.md").exists()]
    body = "\n\n".join((args.out / f"{p}.md").read_text().strip() for p in parts)
    (args.out / "ABLATIONS.md").write_text("# Imagen's claims on Shapes\n\nWritten by `bench/imagen_ablations.py`; "
                                           "one sample per prompt, pass rates from the scorer.\n\n" + body + "\n")
    print(section)


if __name__ == "__main__":
    main()
