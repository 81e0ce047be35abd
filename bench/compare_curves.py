"""Pass rate against total training minutes for several runs, on one plot: equal-time comparisons.

    python bench/compare_curves.py --curve shapes-imagen=reports/shapes-imagen-curve.json:0 \
        --curve shapes-ldm-f8=reports/shapes-ldm-f8-curve.json:18.5 --out reports/imagen-vs-ldm

Each curve is a CURVE.json of bench/training_curve.py; the number after the colon is the minutes
spent before that run's first step (a latent model's autoencoder), added to its axis. Writes OUT.png
and OUT.md (each run's pass rate at the last snapshot at or before each mark of total minutes).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--curve", action="append", required=True, help="NAME=CURVE.json:OFFSET_MINUTES")
    ap.add_argument("--marks", type=float, nargs="+", default=[20, 30, 45, 60, 75])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = {}
    for spec in args.curve:
        name, rest = spec.split("=", 1)
        path, offset = rest.rsplit(":", 1)
        points = json.loads(Path(path).read_text())["points"]
        runs[name] = [(p["minutes"] + float(offset), p["overall"]) for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in runs.items():
        ax.plot([m for m, _ in pts], [v for _, v in pts], marker="o", label=name)
    ax.set(xlabel="total training minutes on this machine (2 CPU cores)", ylabel="pass rate on test (200 prompts)",
           title="time to quality")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)

    def at(pts, mark):
        before = [v for m, v in pts if m <= mark + 1e-6]
        return f"{before[-1]:.3f}" if before else "-"

    lines = ["| run | " + " | ".join(f"{m:g} min" for m in args.marks) + " |", "| --- |" + " --- |" * len(args.marks)]
    lines += [f"| {name} | " + " | ".join(at(pts, m) for m in args.marks) + " |" for name, pts in runs.items()]
    table = "\n".join(lines)
    Path(args.out + ".md").write_text(
        "Pass rate on 200 `test` prompts at the last snapshot within each total training time "
        "(minutes before a run's first step, such as an autoencoder's, included).\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
