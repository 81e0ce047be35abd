"""Imagen's text-encoder ablation on Shapes, with CLIP's text tower as an arm: which encoder conditions a
diffusion model best at equal diffusion compute?

    trilemma train configs/ablations/encoder-trained.json   # jointly trained 2-layer transformer (as shipped)
    trilemma train configs/ablations/encoder-minilm.json    # frozen all-MiniLM-L6-v2 (a language model)
    trilemma train configs/ablations/encoder-clip.json      # frozen text tower of shapes-clip (contrastive, hard negatives)
    python bench/encoder_ablation.py --runs runs/ablation-encoder-trained runs/ablation-encoder-minilm \
        runs/ablation-encoder-clip --n 200 --out reports/encoder-ablation

The arms are the 16 px base of shapes-imagen trained from scratch for the same steps and batch (Imagen's
"equal compute" is equal diffusion compute: a frozen encoder's forward pass is not counted), under the
shipped SR stage. Pass rates per category, position first, on the first N prompts of `test` and
`test-novel` (one sample per prompt, seed = index), with the model's own sampling settings. Writes
OUT/results.json and OUT/table.md.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trilemma  # noqa: E402
from trilemma.eval.evaluate import score_samples  # noqa: E402
from trilemma.shapes.export import test_prompts  # noqa: E402
from trilemma.shapes.scorer import SCORER_VERSION  # noqa: E402

CATEGORIES = ("position", "pair", "count", "single")


def score(model, split: str, n: int) -> dict:
    prompts = test_prompts(split, n)
    images = []
    for start in range(0, n, 50):
        images += model.generate(prompts[start:start + 50], seed=start)
    return score_samples(prompts, images)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("reports/encoder-ablation"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for run in args.runs:
        final = Path(run) / "final"
        if f"{run}|{args.n}" in results:
            continue
        model = trilemma.load(final)
        encoder = model.config.text_encoder[0] if isinstance(model.config.text_encoder, list) else model.config.text_encoder
        training = json.loads((final / "training.json").read_text())
        cell = {"run": run, "text_encoder": encoder, "steps": training["step"],
                                      "train_minutes": round(training["train_seconds"] / 60, 1),
                                      **{split: score(model, split, args.n) for split in ("test", "test-novel")},
                                      "scorer_version": SCORER_VERSION}
        # Re-read before writing: one process per arm may share the file.
        results = json.loads(path.read_text()) if path.exists() else {}
        results[f"{run}|{args.n}"] = cell
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(run, {s: results[f"{run}|{args.n}"][s]["overall"]["pass_rate"] for s in ("test", "test-novel")}, flush=True)
    if not all(f"{run}|{args.n}" in results for run in args.runs):
        return  # another process scores the other arms; the last one to finish writes the table
    lines = ["| base's text encoder | split | " + " | ".join(CATEGORIES) + " | overall | steps | wall minutes |",
             "| --- | --- |" + " --- |" * (len(CATEGORIES) + 3)]
    for run in args.runs:
        r = results[f"{run}|{args.n}"]
        enc = r["text_encoder"].get("pretrained", "jointly trained")
        for split in ("test", "test-novel"):
            s = r[split]
            lines.append(f"| {enc} | `{split}` | " + " | ".join(f"{s[c]['pass_rate']:.3f}" if c in s else "n/a" for c in CATEGORIES)
                         + f" | **{s['overall']['pass_rate']:.3f}** | {r['steps']} | {r['train_minutes']} |")
    command = "python bench/encoder_ablation.py --runs " + " ".join(args.runs) + f" --n {args.n} --out {args.out}"
    (args.out / "table.md").write_text(f"Regenerate: `{command}` (scorer v{SCORER_VERSION})\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
