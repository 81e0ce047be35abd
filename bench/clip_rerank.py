"""CLIP reranking on the Shapes benchmark: what keeping the best of N candidates by CLIP buys, and what it costs.

    .venv/bin/python bench/clip_rerank.py --n 100 --out reports/clip-rerank

For every shipped Shapes model and the first P prompts of `test`, 16 candidates per prompt are drawn once, at
the seeds `trilemma generate --rerank N` uses (candidate j of prompt k: seed k + j * CANDIDATE_STRIDE, drawn in
batches of 50 as the command's default --batch-size draws them), and kept as PNGs under
reports/eval-cache/rerank/<model>-<weights hash>/c<j>/ so an interrupted run resumes. Every candidate is scored
twice: by CLIP (the choice, and only the choice) and by the Shapes scorer (the table, and only the table). As the
candidates are nested, the choice among the first N of them is exactly the image `--rerank N` writes, for
N = 1, 2, 4, 8, 16. Per N and model:

- pass rate of the CLIP-chosen image, per category and overall (N = 1 is plain generation);
- oracle rate: the share of prompts where any of the first N candidates passes (the ceiling of reranking);
- random pick: the mean pass rate of the first N candidates (what choosing blindly among them gives);
- gained / lost: prompts whose chosen image passes where candidate 0 fails, and the reverse;
- cost: images per second of `generate_reranked` on a fixed batch of prompts (default 8), timed end to end at
  N = 1 (median of 3 runs) and at N = 16 (one run); N = 2, 4, 8 are derived from those two, t(N) = t(1) + (N - 1) * (t(16) - t(1)) / 15 (each
  extra candidate is one more batched generate call and one more CLIP batch). The CLIP share of a candidate's
  cost is timed apart. The JSON marks each figure "measured" or "derived".

Also, per category, CLIP's pairwise accuracy as a judge: over the pairs of candidates of one prompt that the Shapes
scorer splits (one passes, one fails), the share CLIP ranks the right way round (0.5: chance); and what the failing
candidates get wrong: the share that fail on the relation alone (right objects, wrong places) rather than on the objects.

Writes OUT/results.json, OUT/candidates.json (every candidate's CLIP score and verdict), OUT/table.md (the model x N
table) and OUT/examples.png (for 4 prompts of one model, the
first 8 candidates with their CLIP scores, the chosen one framed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_seconds  # noqa: E402

import trilemma  # noqa: E402
from trilemma.checkpoint import file_sha256  # noqa: E402
from trilemma.clip import DEFAULT_CLIP, load_clip
from trilemma.clip.rerank import CANDIDATE_STRIDE, best_candidate, clip_scores, draw_candidate, generate_reranked
from trilemma.eval.evaluate import model_key
from trilemma.shapes.export import test_prompts
from trilemma.shapes.scenes import parse_prompt
from trilemma.shapes.scorer import SCORER_VERSION, score_image, summarize

NS = (1, 2, 4, 8, 16)
CATEGORIES = ("single", "pair", "count", "position")


def candidate_folder(cache: Path, model, name: str, j: int, seed: int = 0) -> Path:
    return cache / model_key(model, name) / f"test-seed{seed}" / f"c{j:02d}"


def draw_candidates(model, name: str, prompts: list[str], max_n: int, cache: Path, batch_size: int = 50, seed: int = 0,
                    log=print, **options) -> list[list[Image.Image]]:
    """cands[k][j]: candidate j of prompt k, read from the cache or drawn (one batched call per candidate and batch,
    at seed + start, as `trilemma generate --rerank` draws them) and kept there. `options` go to generate (they are
    not part of the cache's key: the benchmark draws with the defaults)."""
    cands: list[list[Image.Image]] = [[] for _ in prompts]
    for j in range(max_n):
        folder = candidate_folder(cache, model, name, j, seed)
        folder.mkdir(parents=True, exist_ok=True)
        drawn = 0
        for start in range(0, len(prompts), batch_size):
            paths = [folder / f"{k:06d}.png" for k in range(start, min(len(prompts), start + batch_size))]
            if all(p.is_file() for p in paths):
                images = [Image.open(p).convert("RGB") for p in paths]
            else:
                images = draw_candidate(model, prompts[start:start + len(paths)], seed + start, j, **options)
                for p, im in zip(paths, images):
                    tmp = p.with_suffix(".tmp.png")
                    im.save(tmp)
                    os.replace(tmp, p)  # a killed run never leaves a cut PNG under the final name
                drawn += len(paths)
            for k, im in enumerate(images, start=start):
                cands[k].append(im)
        if drawn:
            log(f"  {name}: candidate {j + 1}/{max_n} drawn ({drawn} images)")
    return cands


def score_candidates(prompts: list[str], cands: list[list[Image.Image]], scorer) -> tuple[list[list[bool]], list[list[float]], list[list[str]]]:
    """(passed[k][j] by the Shapes scorer, clip[k][j] CLIP cosine with prompt k, reasons[k][j] the scorer's reason)."""
    verdicts = [[score_image(im, parse_prompt(p)) for im in row] for p, row in zip(prompts, cands)]
    passed = [[bool(v.passed) for v in row] for row in verdicts]
    reasons = [[v.reason for v in row] for row in verdicts]
    clip = [[] for _ in prompts]
    for j in range(len(cands[0])):
        for k, s in enumerate(clip_scores(scorer, [row[j] for row in cands], prompts)):
            clip[k].append(s)
    return passed, clip, reasons


def failure_kinds(prompts: list[str], passed: list[list[bool]], reasons: list[list[str]]) -> dict:
    """Per category, over every candidate: how many fail, and the share of those whose only fault is the relation
    (the scorer found the right objects, placed wrongly) rather than the objects (missing, extra, merged, wrong
    color, shape, size or count)."""
    out = {}
    for category in (*CATEGORIES, "overall"):
        kinds = [r.startswith("relation") for p, row_p, row_r in zip(prompts, passed, reasons)
                 if category == "overall" or parse_prompt(p).category == category
                 for f, r in zip(row_p, row_r) if not f]
        out[category] = {"failed": len(kinds), "relation_only": sum(kinds) / len(kinds) if kinds else None}
    return out


def _rates(prompts: list[str], flags: list[bool]) -> dict:
    parsed = [parse_prompt(p) for p in prompts]
    s = summarize([{"category": q.category, "novel": q.novel, "passed": f} for q, f in zip(parsed, flags)])
    return {key: s[key]["pass_rate"] for key in (*CATEGORIES, "overall")} | {"n": {key: s[key]["n"] for key in (*CATEGORIES, "overall")}}


def rerank_table(prompts: list[str], passed: list[list[bool]], clip: list[list[float]], ns=NS) -> dict:
    """Per N: the CLIP choice's pass rates, the oracle's, a random pick's, and how the choice moved from candidate 0."""
    out = {}
    for n in ns:
        chosen = [best_candidate(row[:n]) for row in clip]
        chosen_pass = [passed[k][j] for k, j in enumerate(chosen)]
        out[str(n)] = {
            "clip_choice": _rates(prompts, chosen_pass),
            "oracle": _rates(prompts, [any(row[:n]) for row in passed]),
            "random_pick": sum(sum(row[:n]) / n for row in passed) / len(passed),
            "gained": sum(c and not row[0] for c, row in zip(chosen_pass, passed)),
            "lost": sum(row[0] and not c for c, row in zip(chosen_pass, passed)),
            "chose_candidate_0": sum(j == 0 for j in chosen) / len(chosen),
            "mean_clip_score_chosen": sum(row[j] for row, j in zip(clip, chosen)) / len(chosen),
        }
    return out


def clip_pairwise_accuracy(prompts: list[str], passed: list[list[bool]], clip: list[list[float]]) -> dict:
    """CLIP as a judge, per category: over every pair of candidates of the same prompt where the Shapes scorer passes
    one and fails the other, the share where CLIP scores the passing one higher (ties count half); 0.5 is chance.
    `pairs` says how many such pairs there were."""
    out = {}
    for category in (*CATEGORIES, "overall"):
        right = pairs = 0.0
        for prompt, row_p, row_c in zip(prompts, passed, clip):
            if category != "overall" and parse_prompt(prompt).category != category:
                continue
            for a in (j for j, f in enumerate(row_p) if f):
                for b in (j for j, f in enumerate(row_p) if not f):
                    pairs += 1
                    right += 1.0 if row_c[a] > row_c[b] else 0.5 if row_c[a] == row_c[b] else 0.0
        out[category] = {"accuracy": right / pairs if pairs else None, "pairs": int(pairs)}
    return out


def benchmark_model(model, name: str, prompts: list[str], scorer, ns=NS, cache: Path = Path("reports/eval-cache/rerank"),
                    batch_size: int = 50, log=print, **options) -> dict:
    """The core of the benchmark for one model: draw max(ns) candidates per prompt (cached), score them, and
    tabulate every N. Also returns the per-prompt scores (for the examples sheet and for checks)."""
    cands = draw_candidates(model, name, prompts, max(ns), cache, batch_size, log=log, **options)
    passed, clip, reasons = score_candidates(prompts, cands, scorer)
    return {"rates": rerank_table(prompts, passed, clip, ns), "clip_pairwise": clip_pairwise_accuracy(prompts, passed, clip),
            "failures": failure_kinds(prompts, passed, reasons),
            "passed": passed, "clip": clip, "candidates": cands}


def time_reranking(model, scorer, prompts: list[str], ns=NS, clip_repeats: int = 5, low_repeats: int = 3, **options) -> dict:
    """Seconds of `generate_reranked` on `prompts` at the smallest N (median of `low_repeats` runs) and the largest
    (one run), measured end to end after one warm-up call; the others derived linearly between them; and the CLIP
    scoring of one candidate batch alone (median of `clip_repeats`)."""
    lo, hi = min(ns), max(ns)
    generate_reranked(model, prompts[:2], seed=0, candidates=1, clip=scorer, **options)  # warm-up (allocations, lazy init)
    load = {"before": os.getloadavg()[0]}
    measured = {n: median_seconds(lambda n=n: generate_reranked(model, prompts, seed=0, candidates=n, clip=scorer, **options),
                                   low_repeats if n == lo else 1, warmup=0) for n in (lo, hi)}
    images = model.generate(prompts, seed=0, **options)
    clip_s = median_seconds(lambda: clip_scores(scorer, images, prompts), clip_repeats, warmup=0)
    load["after"] = os.getloadavg()[0]
    per_candidate = (measured[hi] - measured[lo]) / (hi - lo) if hi > lo else None
    rows = {}
    for n in ns:
        seconds = measured[n] if n in measured else measured[lo] + (n - lo) * per_candidate
        rows[str(n)] = {"seconds": seconds, "images_per_second": len(prompts) / seconds,
                        "how": "measured" if n in measured else "derived"}
    return {"prompts": len(prompts), "repeats": {str(lo): low_repeats, str(hi): 1}, "per_N": rows,
            "seconds_per_extra_candidate_batch": per_candidate,
            "clip_seconds_per_candidate_batch": clip_s, "load_average_1min": load}


def contact_sheet(prompts: list[str], cands, clip, passed, n: int = 8, cell: int = 128) -> Image.Image:
    """One row per prompt: its first n candidates, captioned with CLIP score and the scorer's verdict, the CLIP
    choice framed in green."""
    font = ImageFont.load_default()
    head, cap, pad = 16, 26, 6
    sheet = Image.new("RGB", (pad + n * (cell + pad), len(prompts) * (head + cell + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (prompt, row_c, row_s, row_p) in enumerate(zip(prompts, cands, clip, passed)):
        y = pad + r * (head + cell + cap + pad)
        chosen = best_candidate(row_s[:n])
        draw.text((pad, y), f"{prompt}   (CLIP chooses c{chosen})", fill="black", font=font)
        for j in range(n):
            x = pad + j * (cell + pad)
            sheet.paste(row_c[j].convert("RGB").resize((cell, cell), Image.NEAREST), (x, y + head))
            if j == chosen:
                draw.rectangle([x - 3, y + head - 3, x + cell + 2, y + head + cell + 2], outline=(0, 170, 0), width=3)
            verdict = "pass" if row_p[j] else "fail"
            draw.text((x, y + head + cell + 2), f"c{j} clip {row_s[j]:.3f}{'  CHOSEN' if j == chosen else ''}\nscorer: {verdict}",
                      fill=(0, 120, 0) if j == chosen else "black", font=font, spacing=0)
    return sheet


def pick_examples(prompts, passed, k: int = 4, n: int = 8) -> list[int]:
    """k prompts whose first n candidates are mixed (some pass, some fail), from as many categories as possible."""
    mixed = [i for i, row in enumerate(passed) if 0 < sum(row[:n]) < n]
    picked, seen = [], set()
    for i in mixed:  # one per category first
        c = parse_prompt(prompts[i]).category
        if c not in seen:
            picked.append(i)
            seen.add(c)
    picked += [i for i in mixed if i not in picked]
    picked += [i for i in range(len(prompts)) if i not in picked]
    return sorted(picked[:k])


def markdown_table(results: dict) -> str:
    ns = results["ns"]
    lines = ["| model | | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|---|" + "---:|" * len(ns)]
    for name, r in results["models"].items():
        rates = r["rates"]
        lines.append(f"| {name} | pass rate, CLIP's choice | " + " | ".join(f"{rates[str(n)]['clip_choice']['overall']:.2f}" for n in ns) + " |")
        lines.append("| | oracle (any of N passes) | " + " | ".join(f"{rates[str(n)]['oracle']['overall']:.2f}" for n in ns) + " |")
        if "timing" in r:
            t = r["timing"]["per_N"]
            lines.append("| | images/s | " + " | ".join(
                f"{t[str(n)]['images_per_second']:.3g}{'' if t[str(n)]['how'] == 'measured' else ' (d)'}" for n in ns) + " |")
    return "\n".join(lines) + ("\n\n(d): derived, t(1) + (N - 1) (t(16) - t(1)) / 15, from the N=1 and N=16 times, "
                               "which were measured end to end.\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="prompts: the first N of test (default 100)")
    ap.add_argument("--out", default="reports/clip-rerank")
    ap.add_argument("--models", nargs="*", help="models (default: every shipped Shapes model)")
    ap.add_argument("--clip", default=DEFAULT_CLIP, help="the CLIP that chooses (a shipped name or a folder)")
    ap.add_argument("--cache", default="reports/eval-cache/rerank")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--time-prompts", type=int, default=8, help="prompts in the timed batch (0: no timing)")
    ap.add_argument("--examples-model", help="the model of examples.png (default: the one with most mixed prompts)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a 2-core machine the benchmarks run side by side, one core each; "
                         "two 2-thread processes on 2 cores run several times slower than either alone)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from trilemma.registry import shapes_models

    scorer = load_clip(args.clip)
    names = args.models or list(shapes_models())
    prompts = test_prompts("test", args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "split": "test", "n_prompts": args.n, "ns": list(NS), "candidate_stride": CANDIDATE_STRIDE,
               "clip": {"source": args.clip, "folder": str(scorer.folder), "sha256": file_sha256(scorer.folder / "model.safetensors")},
               "scorer_version": SCORER_VERSION, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "platform": platform.platform(), "models": {}}
    per_model, per_prompt = {}, {}
    for name in names:
        t0 = time.perf_counter()
        print(f"{name}: drawing/reading {max(NS)} candidates x {args.n} prompts", flush=True)
        model = trilemma.load(name)
        r = benchmark_model(model, name, prompts, scorer, NS, Path(args.cache), args.batch_size,
                            log=lambda m: print(m, flush=True))
        per_model[name] = r
        entry = {"model_key": model_key(model, name), "rates": r["rates"], "clip_pairwise": r["clip_pairwise"],
                 "failures": r["failures"]}
        if args.time_prompts:
            print(f"{name}: timing generate_reranked at N={min(NS)} and N={max(NS)} on {args.time_prompts} prompts", flush=True)
            entry["timing"] = time_reranking(model, scorer, prompts[:args.time_prompts], NS)
        results["models"][name] = entry
        print(name, json.dumps({n: (round(v["clip_choice"]["overall"], 3), round(v["oracle"]["overall"], 3))
                                for n, v in r["rates"].items()}), f"({time.perf_counter() - t0:.0f} s)", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # after each model: partial results
        per_prompt[name] = {"passed": [[int(f) for f in row] for row in r["passed"]],
                            "clip": [[round(c, 5) for c in row] for row in r["clip"]]}
        (out / "candidates.json").write_text(json.dumps({"prompts": prompts, "models": per_prompt}) + "\n")
        del model
    (out / "table.md").write_text(markdown_table(results))
    ex = args.examples_model or max(per_model, key=lambda m: sum(0 < sum(row[:8]) < 8 for row in per_model[m]["passed"]))
    r = per_model[ex]
    picked = pick_examples(prompts, r["passed"])
    contact_sheet([prompts[i] for i in picked], [r["candidates"][i] for i in picked], [r["clip"][i] for i in picked],
                  [r["passed"][i] for i in picked]).save(out / "examples.png")
    results["examples"] = {"model": ex, "prompt_indices": picked}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(results))


if __name__ == "__main__":
    main()
