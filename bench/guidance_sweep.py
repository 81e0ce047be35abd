"""Pass rate against the classifier-free guidance scale, one sample per prompt.

    python bench/guidance_sweep.py --model shapes-dalle --scales 1 2 3 5 --n 500 --out reports/shapes-dalle-guidance

For each scale: the first N canonical prompts of `test` (seed = index), scored
by the Shapes scorer. Writes OUT.json and OUT.md.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from score_model import parse_sets, score_split  # noqa: E402

import trilemma  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = trilemma.load(args.model)
    rows = {}
    for scale in args.scales:
        summary, seconds, _ = score_split(model, args.split, args.n, guidance_scale=scale, **parse_sets(args.set))
        rows[f"{scale:g}"] = {k: v["pass_rate"] for k, v in summary.items() if k != "by_pairs"}
        print(scale, rows[f"{scale:g}"], f"{seconds:.0f}s", flush=True)
    Path(args.out + ".json").write_text(json.dumps({"model": args.model, "split": args.split, "n": args.n, "by_scale": rows}, indent=2) + "\n")
    lines = ["| guidance scale | overall | single | pair | count | position |", "| --- | --- | --- | --- | --- | --- |"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines += [f"| {s} | {fmt(r['overall'])} | {fmt(r['single'])} | {fmt(r['pair'])} | {fmt(r['count'])} | {fmt(r['position'])} |"
              for s, r in rows.items()]
    Path(args.out + ".md").write_text(f"`{args.model}` on {args.n} prompts of `{args.split}`, one sample per prompt.\n\n"
                                      + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
