"""Pass rate against training minutes, from the snapshots a training run kept.

    python bench/training_curve.py runs/shapes-ldm --n 200 --out reports/shapes-ldm-curve

Each snapshot (`snapshot_every` in the recipe) is an EMA model with its
training time; each is scored on the first N prompts of `test` (one sample
per prompt). Writes CURVE.json and CURVE.png.
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
from score_model import parse_sets, score_split  # noqa: E402

from trilemma.model import TrainableModel  # noqa: E402
from trilemma.shapes.scorer import SCORER_VERSION  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    ap.add_argument("--stride", type=int, default=1, help="score every k-th snapshot (the final model always)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a generate() option, as in score_model.py")
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    snapshots = sorted((run / "snapshots").glob("step-*[0-9]"))[args.stride - 1::args.stride]
    if (run / "final").is_dir():
        snapshots.append(run / "final")
    points = []
    for snap in snapshots:
        info = json.loads((snap / "training.json").read_text())
        model = TrainableModel.from_pretrained(snap)
        summary, _, _ = score_split(model, "test", args.n, **parse_sets(args.set))
        points.append({"step": info["step"], "minutes": round(info["train_seconds"] / 60, 2),
                       **{k: v["pass_rate"] for k, v in summary.items() if k != "by_pairs"}})
        print(points[-1], flush=True)
    seen = {}
    for p in points:  # `final` may repeat the last snapshot's step
        seen[p["step"]] = p
    points = sorted(seen.values(), key=lambda p: p["step"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"run": str(run), "n": args.n, "scorer_version": SCORER_VERSION,
                                                       "points": points}, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [p["minutes"] for p in points]
    for key, style in [("overall", "k-o"), ("single", "--"), ("pair", "--"), ("count", "--"), ("position", "--")]:
        ax.plot(minutes, [p[key] for p in points], style, label=key, linewidth=2 if key == "overall" else 1)
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel(f"pass rate on {args.n} test prompts")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title or f"{run.name}: pass rate vs training time")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
