"""Which lever moves position and counts: backbone (U-Net or MMDiT), objective (v or rectified flow) and text
encoder (jointly trained or the frozen shapes-clip tower), at equal CPU minutes.

    for arm in unet-v unet-flow mmdit-flow; do for enc in trained clip; do
        OMP_NUM_THREADS=1 trilemma train configs/ablations/rf-$arm-$enc.json; done; done
    python bench/rf_ablation.py --runs runs/rf-* --out reports/rf-ablation

For each run: the pass rate per category on the first `--curve-n` prompts of `test` at every snapshot (the curve
against training minutes), then the last snapshot on `--n` prompts of `test` and `test-novel` (one sample per
prompt) at the guidance scale that passed most of `--tune-n` prompts of `train` (never tuned on `test`), its
sampling speed (images/s, every arm timed in this one process on the same batch), and the relation-flip probe:
for `--probe-n` position scenes of `train`, the same seed drawn under "A rel B" and under "A opposite-rel B". A
model that ignores the relation word draws the same layout for both, so the relation holds in at most one of the
two; the share of pairs where it holds in both measures how far the model reads the relation, apart from whether
it draws the right objects (counted only where both objects are found in both images).
Writes results.json, table.md and curves.png under --out.
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import trilemma  # noqa: E402

from score_model import score_split  # noqa: E402

from trilemma.model import TrainableModel  # noqa: E402
from trilemma.shapes.scenes import INVERSE_RELATION as OPPOSITE, RELATION_WORDS, parse_prompt, sample_scene  # noqa: E402
from trilemma.shapes.scorer import SCORER_VERSION, detect  # noqa: E402

CATEGORIES = ("overall", "single", "pair", "count", "position")
WORDING = {relation: words[0] for relation, words in RELATION_WORDS.items()}  # the canonical wording


def rates(summary: dict) -> dict:
    return {k: summary[k]["pass_rate"] for k in CATEGORIES if k in summary}


def snapshots(run: Path) -> list[Path]:
    snaps = sorted((run / "snapshots").glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    return snaps + ([run / "final"] if (run / "final").is_dir() else [])


def curve(run: Path, n: int, stride: int, guidance: float | None) -> list[dict]:
    points, snaps = [], snapshots(run)
    for snap in snaps[stride - 1::stride] if stride > 1 else snaps:
        info = json.loads((snap / "training.json").read_text())
        model = TrainableModel.from_pretrained(snap).eval()
        options = {} if guidance is None else {"guidance_scale": guidance}
        summary, _, _ = score_split(model, "test", n, **options)
        points.append({"step": info["step"], "minutes": round(info["train_seconds"] / 60, 2), **rates(summary)})
        print(run.name, points[-1], flush=True)
    return points


def tune_guidance(model, scales: list[float], n: int) -> tuple[float, dict]:
    """The guidance scale that passes most of the first n `train` prompts."""
    results = {}
    for scale in scales:
        summary, _, _ = score_split(model, "train", n, guidance_scale=scale)
        results[scale] = summary["overall"]["pass_rate"]
    return max(results, key=results.get), results


def relation_probe(model, n: int, guidance: float | None) -> dict:
    """The relation-flip probe on n position scenes of `train` (see the module docstring)."""
    scenes = [sample_scene("train", 10_000 + i, category="position") for i in range(n)]
    parsed = [parse_prompt(s.prompt) for s in scenes]
    original = [f"a {p.objects[0].color} {p.objects[0].shape} {WORDING[p.relation]} a {p.objects[1].color} "
                f"{p.objects[1].shape}" for p in parsed]
    flipped = [f"a {p.objects[0].color} {p.objects[0].shape} {WORDING[OPPOSITE[p.relation]]} a "
               f"{p.objects[1].color} {p.objects[1].shape}" for p in parsed]
    # The same seed for a prompt and its flip: generate() seeds image i with seed + i.
    options = {} if guidance is None else {"guidance_scale": guidance}
    first = model.generate(original, seed=0, **options)
    second = model.generate(flipped, seed=0, **options)
    found = both = holds = 0
    for p, a, b in zip(parsed, first, second):
        ok = []
        for image, relation in ((a, p.relation), (b, OPPOSITE[p.relation])):
            centres = {}
            for obj in detect(image):
                centres.setdefault((obj.color, obj.shape), []).append((obj.cx, obj.cy))
            pa, pb = centres.get((p.objects[0].color, p.objects[0].shape)), centres.get((p.objects[1].color, p.objects[1].shape))
            if not pa or not pb or len(pa) != 1 or len(pb) != 1 or pa == pb:
                break
            dx, dy = pb[0][0] - pa[0][0], pb[0][1] - pa[0][1]  # B's centre minus A's; y grows downwards
            ok.append({"left": dx > 0 and abs(dx) > abs(dy), "right": dx < 0 and abs(dx) > abs(dy),
                       "above": dy > 0 and abs(dy) > abs(dx), "below": dy < 0 and abs(dy) > abs(dx)}[relation])
        if len(ok) == 2:
            found += 1
            holds += sum(ok)
            both += all(ok)
    return {"scenes": n, "objects_found_in_both": found,
            "relation_holds": round(float(holds) / max(2 * found, 1), 3),
            "holds_in_both": round(float(both) / max(found, 1), 3)}


def images_per_second(model, guidance: float, batch: int = 32, repeats: int = 2) -> float:
    prompts = [sample_scene("train", i).prompt for i in range(batch)]
    model.generate(prompts[:4], seed=0, guidance_scale=guidance)  # warm-up
    t0 = time.perf_counter()
    for r in range(repeats):
        model.generate(prompts, seed=r, guidance_scale=guidance)
    return round(batch * repeats / (time.perf_counter() - t0), 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--probe-guidance", default="", metavar="G1,G2",
                    help="with --probe-models: also probe at these guidance scales (does stronger guidance make the "
                         "layout follow the relation?)")
    ap.add_argument("--probe-models", nargs="*", default=[], metavar="NAME",
                    help="also run the relation-flip probe alone on these models (shipped names or folders), at their "
                         "own default guidance: what reading the relation looks like in a model that passes position")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--curve-n", type=int, default=100)
    ap.add_argument("--stride", type=int, default=1, help="score every k-th snapshot on the curve")
    ap.add_argument("--tune", default="3,5", help="guidance scales tried on train prompts")
    ap.add_argument("--tune-n", type=int, default=100)
    ap.add_argument("--probe-n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", nargs="*", default=[], metavar="RUN",
                    help="runs whose wall minutes are the CPU clock: trained side by side, one thread each, nothing "
                         "else running. Every arm's minutes are its steps at the step rate of the clock run with its "
                         "backbone (the other arms shared the cores with scoring, so their wall minutes run slow)")
    ap.add_argument("--speed", action="store_true",
                    help="only time sampling, every run's last snapshot in this one process (on an idle machine), "
                         "into the results the scoring wrote")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.pop("_meta", None)
    meta = {"n": args.n, "curve_n": args.curve_n, "tune_n": args.tune_n, "probe_n": args.probe_n,
            "scorer_version": SCORER_VERSION}
    probes = results.setdefault("_probes", {})
    for name in args.probe_models:
        model = trilemma.load(name)
        for scale in [None] + [float(g) for g in args.probe_guidance.split(",") if g]:
            key = name if scale is None else f"{name} at guidance {scale:g}"
            probes[key] = relation_probe(model, args.probe_n, scale)
            print(key, probes[key], flush=True)
        results_path.write_text(json.dumps({**results, "_meta": meta}, indent=2) + "\n")
    for run in map(Path, args.runs):
        last = snapshots(run)[-1]
        if args.speed:
            model = TrainableModel.from_pretrained(last).eval()
            results[run.name]["images_per_second"] = images_per_second(model, results[run.name]["guidance_scale"])
            print(run.name, results[run.name]["images_per_second"], flush=True)
            results_path.write_text(json.dumps({**results, "_meta": meta}, indent=2) + "\n")
            continue
        model = TrainableModel.from_pretrained(last).eval()
        info = json.loads((last / "training.json").read_text())
        guidance, tuning = tune_guidance(model, [float(s) for s in args.tune.split(",")], args.tune_n)
        row = {"run": run.name, "backbone": model.config.backbone, "step": info["step"], "minutes": round(info["train_seconds"] / 60, 2),
               "parameters": model.num_parameters(), "guidance_scale": guidance, "tuning_train": tuning, "splits": {}}
        for split in ("test", "test-novel"):
            summary, _, _ = score_split(model, split, args.n, guidance_scale=guidance)
            row["splits"][split] = rates(summary)
        row["images_per_second"] = results.get(run.name, {}).get("images_per_second")  # --speed measures it
        row["relation_probe"] = relation_probe(model, args.probe_n, guidance)
        row["curve"] = curve(run, args.curve_n, args.stride, guidance)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        results[run.name] = row
        results_path.write_text(json.dumps({**results, "_meta": meta}, indent=2) + "\n")
    rows = [r for r in results.values() if isinstance(r, dict) and "splits" in r]
    probes = results.get("_probes", {})
    rates_by_backbone = {}
    for name in args.clock:
        r = results[Path(name).name]
        rates_by_backbone[r["backbone"]] = r["minutes"] / r["step"]
    for r in rows:
        per_step = rates_by_backbone.get(r["backbone"])
        r["cpu_minutes"] = round(r["step"] * per_step, 2) if per_step else r["minutes"]
        for point in r["curve"]:
            point["cpu_minutes"] = round(point["step"] * per_step, 2) if per_step else point["minutes"]
    if rows:
        results_path.write_text(json.dumps({**results, "_meta": meta}, indent=2) + "\n")
    lines = [f"| arm | CPU min | steps | guidance | split | {' | '.join(CATEGORIES)} |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in CATEGORIES) + " |"]
    for r in rows:
        for split, cells in r["splits"].items():
            lines.append(f"| {r['run']} | {r['cpu_minutes']} | {r['step']} | {r['guidance_scale']} | `{split}` | "
                         + " | ".join("-" if cells.get(k) is None else f"{cells[k]:.3f}" for k in CATEGORIES) + " |")
    lines += ["", "| arm | images/s (2 threads, one process) | relation holds | holds in both (flip probe) | pairs found |",
              "| --- | --- | --- | --- | --- |"]
    for r in rows:
        p = r["relation_probe"]
        lines.append(f"| {r['run']} | {r['images_per_second']} | {p['relation_holds']} | {p['holds_in_both']} | "
                     f"{p['objects_found_in_both']} / {p['scenes']} |")
    for name, p in probes.items():
        lines.append(f"| {name} (shipped, probe only) | - | {p['relation_holds']} | {p['holds_in_both']} | "
                     f"{p['objects_found_in_both']} / {p['scenes']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in rows:
        minutes = [p["cpu_minutes"] for p in r["curve"]]
        for ax, key in zip(axes, ("overall", "position", "count")):
            ax.plot(minutes, [p[key] for p in r["curve"]], "-o", label=r["run"].removeprefix("rf-"), markersize=3)
    for ax, key in zip(axes, ("overall", "position", "count")):
        ax.set_title(f"{key}, first {args.curve_n} test prompts")
        ax.set_xlabel("CPU minutes (one thread of two, side by side)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pass rate")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)


if __name__ == "__main__":
    main()
