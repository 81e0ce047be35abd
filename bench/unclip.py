"""unCLIP on Shapes: the prior's guidance sweep, pass rates, the paper's conditioning ablation, variations, speed.

    python bench/unclip.py --model runs/shapes-unclip/final --out reports/unclip

1. The prior's guidance scale is swept on `train` prompts (tuning never sees the test splits).
2. With the chosen scale: pass rates on the first --n prompts of `test` and `test-novel` (one sample per prompt,
   seed = index), as every card reports them.
3. The paper's ablation (Ramesh et al., 2022, Fig. 16) on the same decoder, so at equal decoder training: given
   the prior's image embedding, the CLIP text embedding directly, or the caption alone (embedding dropped);
   and the prior's 2-candidate trick. --ablation-n prompts of each split.
4. The prior itself: the cosine between its embedding and the CLIP image embedding of the scene's ground-truth
   render, against the text embedding's cosine with it (CLIP's modality gap, which the prior exists to cross).
5. Variations: --vary-n ground-truth renders of `test` and `test-novel`, 4 variations each (the image embedding
   alone, no caption), each scored against the source scene's caption.
6. Images per second at batch 32 (median of timed runs after a warm-up), each arm in the same run.
Samples are kept in --cache (reports/eval-cache), so a re-run re-scores without drawing again.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trilemma  # noqa: E402
from bench.score_model import score_split  # noqa: E402
from bench.timing import median_seconds  # noqa: E402
from trilemma.eval.evaluate import score_samples  # noqa: E402
from trilemma.grid import image_grid  # noqa: E402
from trilemma.shapes.scenes import render, sample_scene  # noqa: E402
from trilemma.shapes.scorer import SCORER_VERSION  # noqa: E402

CATEGORIES = ("single", "pair", "count", "position")


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def rates(summary: dict) -> dict:
    return {k: summary[k]["pass_rate"] for k in ("overall", *CATEGORIES)}


@torch.no_grad()
def prior_cosines(model, split: str, n: int, guidance: float) -> dict:
    scenes = [sample_scene(split, i) for i in range(n)]
    prompts = [s.prompt for s in scenes]
    truth = model.embed_images([render(s, 64) for s in scenes])
    text = model.clip.encode_text(prompts)[0]
    prior = torch.cat([model.prior_sample(prompts[k:k + 100], list(range(k, min(n, k + 100))), guidance)
                       for k in range(0, n, 100)])
    return {"prior_vs_image": round(F.cosine_similarity(prior, truth).mean().item(), 4),
            "text_vs_image": round(F.cosine_similarity(text, truth).mean().item(), 4),
            "prior_vs_text": round(F.cosine_similarity(prior, text).mean().item(), 4)}


@torch.no_grad()
def variations(model, split: str, n: int, per: int, grid: Path | None = None) -> dict:
    scenes = [sample_scene(split, i) for i in range(n)]
    prompts, images, shown, captions = [], [], [], []
    for i, scene in enumerate(scenes):
        source = render(scene, 64)
        varied = model.vary([source], n=per, seed=i * per)[0]
        prompts += [scene.prompt] * per
        images += varied
        if grid is not None and i < 8:
            shown += [source] + varied
            captions += [scene.prompt] + [""] * per
    if grid is not None:
        image_grid(shown, captions, cols=per + 1).save(grid)
    sources = score_samples([s.prompt for s in scenes], [render(s, 64) for s in scenes])
    return {"variations": rates(score_samples(prompts, images)), "sources": sources["overall"]["pass_rate"],
            "n_sources": n, "per_source": per}


def images_per_second(model, batch: int, **options) -> float:
    prompts = [sample_scene("train", i).prompt for i in range(batch)]
    return batch / median_seconds(lambda: model.generate(prompts, seed=0, batch_size=batch, **options), repeats=2)


def markdown(report: dict) -> str:
    lines = [f"# unCLIP on Shapes: {report['model']}", "", f"Scorer v{report['scorer_version']}. Command: "
             f"`{report['command']}`", ""]
    lines += ["## The prior's guidance scale, tuned on `train`", "",
              f"{report['tune_n']} `train` prompts, one sample each; the decoder's guidance stays at its default"
              + (f" (swept on {report['sweep_model']}, before it was shipped with the chosen scale as its default)"
                 if report.get("sweep_model") else "") + ".", "",
              "| prior guidance | overall | single | pair | count | position |", "| --- | --- | --- | --- | --- | --- |"]
    for scale, r in report["prior_sweep"].items():
        lines.append(f"| {scale} | " + " | ".join(f3(r[k]) for k in ("overall", *CATEGORIES)) + " |")
    lines += ["", f"Chosen: **{report['prior_guidance_scale']}**.", ""]
    lines += ["## Pass rates", "", f"The first {report['n']} prompts of each split, one sample per prompt (seed = index).", "",
              "| split | overall | single | pair | count | position |", "| --- | --- | --- | --- | --- | --- |"]
    for split, r in report["scores"].items():
        lines.append(f"| `{split}` | **{f3(r['overall'])}** | " + " | ".join(f3(r[k]) for k in CATEGORIES) + " |")
    lines += ["", "## What the decoder is given (the paper's ablation, same decoder)", "",
              f"The first {report['ablation_n']} prompts of each split. 'image': the prior's image embedding and the caption "
              "(as shipped); 'text': the CLIP text embedding in its place; 'caption': no embedding (the decoder's "
              "unconditional embedding), the caption alone; '2 candidates': the prior draws two embeddings and keeps "
              "the one nearer the text embedding.", "",
              "| decoder given | split | overall | single | pair | count | position | images/s (batch 32) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm, by_split in report["ablation"].items():
        for split, r in by_split.items():
            speed = report["images_per_second"].get(arm)
            lines.append(f"| {arm} | `{split}` | {f3(r['overall'])} | " + " | ".join(f3(r[k]) for k in CATEGORIES)
                         + (f" | {speed:.2f} |" if speed else " | - |"))
    c = report["prior_cosines"]
    lines += ["", "## The prior", "", f"On {report['cosine_n']} `test` scenes: the cosine between the prior's embedding and "
              f"CLIP's embedding of the scene's ground-truth render is **{c['prior_vs_image']:.3f}**; the caption's text "
              f"embedding's is {c['text_vs_image']:.3f} (CLIP's modality gap); the prior's embedding and the text "
              f"embedding: {c['prior_vs_text']:.3f}.", ""]
    lines += ["## Variations", "", "`trilemma vary`: the CLIP image embedding of a ground-truth render, decoded with "
              f"{report['variations']['test']['per_source']} seeds and no caption; each variation scored against the source's "
              "caption.", "", "| split | sources | variations pass | single | pair | count | position | sources pass |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split, v in report["variations"].items():
        r = v["variations"]
        lines.append(f"| `{split}` | {v['n_sources']} | **{f3(r['overall'])}** | " + " | ".join(f3(r[k]) for k in CATEGORIES)
                     + f" | {f3(v['sources'])} |")
    lines += ["", "![variations](variations.png)", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", default="shapes-unclip", help="the model's name in the sample cache")
    ap.add_argument("--out", type=Path, default=Path("reports/unclip"))
    ap.add_argument("--cache", type=Path, default=Path("reports/eval-cache"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--ablation-n", type=int, default=200)
    ap.add_argument("--tune-n", type=int, default=100)
    ap.add_argument("--vary-n", type=int, default=100)
    ap.add_argument("--cosine-n", type=int, default=500)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--time", type=int, default=32, help="batch for images/s (0: skip)")
    ap.add_argument("--sweep-only", action="store_true", help="only the prior's guidance sweep on train (to choose the "
                                                              "shipped default), written to OUT/sweep.json")
    ap.add_argument("--sweep-from", type=Path, help="a sweep.json of --sweep-only: its sweep goes in the report")
    args = ap.parse_args()
    model = trilemma.load(args.model)
    report = {"model": args.model, "scorer_version": SCORER_VERSION, "n": args.n, "ablation_n": args.ablation_n,
              "tune_n": args.tune_n, "cosine_n": args.cosine_n,
              "command": "python bench/unclip.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                               if k not in ("scales", "sweep_only") and v is not None)
                   + (" --sweep-only" if args.sweep_only else "") + " --scales " + " ".join(map(str, args.scales))}
    if args.sweep_from:
        previous = json.loads(args.sweep_from.read_text())
        sweep, report["tune_n"], report["sweep_model"] = previous["prior_sweep"], previous["tune_n"], previous["model"]
    else:
        sweep = {}
        for scale in args.scales:
            summary, _, _ = score_split(model, "train", args.tune_n, cache=args.cache, name=args.name, prior_guidance_scale=scale)
            sweep[str(scale)] = rates(summary)
            print("prior guidance", scale, sweep[str(scale)], flush=True)
    best = float(max(sweep, key=lambda s: sweep[s]["overall"]))
    report.update(prior_sweep=sweep, prior_guidance_scale=best)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep_only:
        (args.out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
        print("best prior guidance", best)
        return
    # The model's own default prior guidance (the shipped model carries the chosen one): its samples are the ones
    # `trilemma evaluate` and `compare` draw, so they share the cache.
    default = {} if best == model.config.prior_guidance_scale else {"prior_guidance_scale": best}
    arms = {"image": {}, "text": {"conditioning": "text"}, "caption": {"conditioning": "caption"},
            "image, 2 candidates": {"prior_candidates": 2}}
    report["scores"], report["ablation"] = {}, {arm: {} for arm in arms}
    for split in ("test", "test-novel"):
        summary, _, _ = score_split(model, split, args.n, cache=args.cache, name=args.name, **default)
        report["scores"][split] = rates(summary)
        print(split, report["scores"][split], flush=True)
        for arm, options in arms.items():
            summary, _, _ = score_split(model, split, args.ablation_n, cache=args.cache, name=args.name,
                                        **default, **options)
            report["ablation"][arm][split] = rates(summary)
            print(arm, split, report["ablation"][arm][split], flush=True)
    report["prior_cosines"] = prior_cosines(model, "test", args.cosine_n, best)
    print("prior", report["prior_cosines"], flush=True)
    report["variations"] = {split: variations(model, split, args.vary_n, 4, args.out / "variations.png" if split == "test" else None)
                            for split in ("test", "test-novel")}
    print("variations", report["variations"], flush=True)
    report["images_per_second"] = {}
    if args.time:
        for arm, options in arms.items():
            report["images_per_second"][arm] = round(images_per_second(model, args.time, **default, **options), 3)
        print("images/s", report["images_per_second"], flush=True)
    report["parameters"] = {"total (with frozen CLIP and SR)": model.num_parameters(),
                            "prior": sum(p.numel() for p in model.prior.parameters()),
                            "decoder (U-Net, text encoder, embedding projections)":
                                sum(p.numel() for p in model.unets[0].parameters()) + sum(p.numel() for p in model.text_encoders[0].parameters())
                                + sum(p.numel() for p in model.clip_context.parameters())}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(markdown(report))
    print(args.out / "README.md")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{(time.perf_counter() - t0) / 60:.1f} min")
