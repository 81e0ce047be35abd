"""`trilemma evaluate` and `trilemma compare`: every family measured on one table.

evaluate: for one model, the first N canonical prompts of a split, one sample each (seed = index):
- alignment: the Shapes scorer's pass rate per category, seen and held-out pairs, and the CLIP score
  (Hessel et al., 2021; torchmetrics') with a shipped or local CLIP (shapes-clip by default, once shipped);
- fidelity and diversity: FID, KID, precision, recall, density and coverage against renders of
  the same N scenes, on the shipped Shapes feature network (or Inception, given its weights, or the CLIP's
  image embeddings: FD_CLIP);
- cost: parameters, seconds per image and images per second at batch 1 and at the best batch
  (medians of several runs), network evaluations per image (counted by hooks, not computed from
  settings), peak memory, and the training time the model card records.
Generated images and features are cached (keyed by the model's weights and the options), so a rerun
only redoes what changed.

compare: evaluate (or read the cached report of) each model, then one markdown table, three plots
(pass rate and FID against images per second, precision against recall) and a side-by-side grid of
every model's samples for the same prompts and seeds.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

import trilemma
from trilemma.checkpoint import write_json
from trilemma.clip import DEFAULT_CLIP, clip_score, resolve_clip
from trilemma.grid import image_grid
from trilemma.model import require_generator
from trilemma.registry import shipped_clips, shipped_models
from trilemma.eval.fidelity import extract, fid_kid, load_feature_network, precision_recall_density_coverage
from trilemma.shapes.export import test_prompts
from trilemma.shapes.scenes import parse_prompt, render, sample_scene
from trilemma.shapes.scorer import SCORER_VERSION, score_image, summarize
from trilemma.progress import progress as progress_bar

BATCHES = (1, 8, 32, 64)


def model_key(model, name: str) -> str:
    """Short hash of the weights and config: the cache key of a model's samples."""
    h = hashlib.sha256(json.dumps(model.to_config(), sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes()[:4096])
    return f"{Path(name).name}-{h.hexdigest()[:12]}"


def sample_folder(model, name: str, split: str, cache: Path, **options) -> Path:
    """Where `cached_samples` keeps a model's samples of a split under these generate() options."""
    return cache / model_key(model, name) / f"{split}-{json.dumps(options, sort_keys=True)}"


def cached_samples(model, name: str, split: str, n: int, cache: Path, batch_size: int = 50, progress: bool = True,
                   **options) -> tuple[list[str], list[Image.Image]]:
    prompts = test_prompts(split, n)
    folder = sample_folder(model, name, split, cache, **options)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for start in progress_bar(range(0, n, batch_size), desc=f"{Path(name).name} {split}", enabled=progress, leave=False):
        paths = [folder / f"{i:06d}.png" for i in range(start, min(n, start + batch_size))]
        if all(p.exists() for p in paths):
            images += [Image.open(p).convert("RGB") for p in paths]
            continue
        batch = model.generate(prompts[start:start + len(paths)], seed=start, **options)
        for p, im in zip(paths, batch):
            im.save(p)
        images += batch
    return prompts, images


def score_samples(prompts: list[str], images: list[Image.Image]) -> dict:
    """The scorer's pass rates (per category, seen/held-out, overall) of one image per prompt."""
    records = []
    for prompt, image in zip(prompts, images):
        parsed = parse_prompt(prompt)
        records.append({"category": parsed.category, "novel": parsed.novel, "passed": score_image(image, parsed).passed})
    return summarize(records)


def rescore(report: dict, cache: Path, progress: bool = True) -> dict | None:
    """A cached report's alignment measured again with this scorer, on the same samples; fidelity and cost
    do not depend on the scorer and are kept. None when the sample cache no longer holds those samples
    (the report's FID was measured on them): then the whole report must be measured again."""
    model = trilemma.load(report["model"])
    folder = sample_folder(model, report["model"], report["split"], cache)
    if not all((folder / f"{i:06d}.png").is_file() for i in range(report["n"])):
        return None
    prompts, images = cached_samples(model, report["model"], report["split"], report["n"], cache, progress=progress)
    alignment = score_samples(prompts, images)
    return {**report, "alignment": alignment, "pass_rate": alignment["overall"]["pass_rate"],
            "scorer_version": SCORER_VERSION,
            "previous_scorer": {"version": report.get("scorer_version", 1), "pass_rate": report["pass_rate"]}}


def real_renders(split: str, n: int, resolution: int = 64) -> list[Image.Image]:
    return [render(sample_scene(split, i), resolution) for i in range(n)]


def default_clip() -> str | None:
    """The CLIP that evaluate and compare score with when none is named: shapes-clip once it is shipped, else none."""
    return DEFAULT_CLIP if DEFAULT_CLIP in shipped_clips() else None


def clip_label(source: str | Path) -> str:
    """How a report names a CLIP: a shipped CLIP by its name, any other by its absolute folder. Raises
    CLIPLoadError (a ValueError naming the fix) when `source` is not a CLIP."""
    folder = resolve_clip(source)
    return str(source) if str(source) in shipped_clips() else str(folder.resolve())


_WEIGHT_HASHES: dict[tuple, str] = {}


def clip_weights_hash(label: str) -> str:
    """Short hash of a CLIP's model.safetensors: a cached CLIP score from other weights of the same name is stale."""
    path = resolve_clip(label) / "model.safetensors"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _WEIGHT_HASHES[key] = h.hexdigest()[:12]
    return _WEIGHT_HASHES[key]


def measure_clip_score(images: list[Image.Image], prompts: list[str], label: str) -> dict:
    """A report's clip_score entry: torchmetrics' CLIP score (100 * max(cos, 0), averaged) of image i with prompt i."""
    return {"value": clip_score(images, prompts, label), "clip": label, "weights": clip_weights_hash(label), "n": len(images)}


def clip_score_current(report: dict, label: str | None) -> bool:
    """Whether a report's CLIP score was measured with this CLIP (same name and weights) on all its samples."""
    entry = report.get("clip_score")
    if label is None or not isinstance(entry, dict):
        return False
    return entry.get("clip") == label and entry.get("weights") == clip_weights_hash(label) and entry.get("n") == report["n"]


def add_clip_score(report: dict, label: str, cache: Path, progress: bool = True) -> dict:
    """A cached report with its CLIP score measured on its samples (generating only those the cache lacks);
    fidelity, alignment and cost are kept."""
    model = trilemma.load(report["model"])
    prompts, images = cached_samples(model, report["model"], report["split"], report["n"], cache, progress=progress)
    return {**report, "clip_score": measure_clip_score(images, prompts, label)}


class EvaluationCounter:
    """Counts rows through the core networks: per image, that is the network evaluations (NFE)."""

    def __init__(self, model):
        self.rows, self.handles = 0, []
        for module in model.core_networks():
            self.handles.append(module.register_forward_hook(self._hook))

    def _hook(self, module, args, kwargs_or_out, *rest):
        x = args[0] if args else None
        if torch.is_tensor(x):
            self.rows += x.shape[0]

    def close(self):
        for h in self.handles:
            h.remove()


_MEMORY_PROBE = """
import json, resource, sys, torch
import trilemma


def high_water_mib():
    # VmHWM: this process's own peak. ru_maxrss is not: Linux carries the parent's across fork and exec.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


torch.set_num_threads({threads})
model = trilemma.load({name!r})
loaded = high_water_mib()
model.generate([{prompt!r}] * {batch}, seed=0)
print(json.dumps({{"loaded_mib": loaded, "peak_mib": high_water_mib()}}))
"""


def peak_memory(name: str, prompt: str, batch: int) -> dict:
    """Peak resident memory of a fresh process that loads the model and generates one batch.

    A fresh process, because ru_maxrss is a lifetime peak: models measured one after another in one
    process would all report the largest. On a GPU the allocator's own peak is read instead.
    """
    import subprocess

    if torch.cuda.is_available():
        return {"peak_mib": None, "loaded_mib": None}
    code = _MEMORY_PROBE.format(threads=torch.get_num_threads(), name=str(name), prompt=prompt, batch=batch)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_cost(model, name: str | None = None, prompt: str = "a red circle to the left of a blue square", repeats: int = 3) -> dict:
    torch.manual_seed(0)
    counter = EvaluationCounter(model)
    model.generate([prompt], seed=0)
    counter.close()
    nfe = counter.rows
    rates = {}
    for b in BATCHES:
        times = []
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            model.generate([prompt] * b, seed=r)
            if r:
                times.append(time.perf_counter() - t0)
        rates[b] = b / statistics.median(times)
    best = max(rates, key=rates.get)
    if torch.cuda.is_available():
        memory = {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "loaded_mib": None}
    elif name is not None:
        memory = peak_memory(name, prompt, max(BATCHES))
    else:
        memory = {"peak_mib": float("nan"), "loaded_mib": None}
    peak = memory["peak_mib"]
    return {"parameters": model.num_parameters(), "seconds_per_image_batch1": round(1 / rates[1], 4),
            "images_per_second_batch1": round(rates[1], 3), "best_batch": best,
            "images_per_second_best": round(rates[best], 3), "images_per_second_by_batch": {str(k): round(v, 3) for k, v in rates.items()},
            "function_evaluations_per_image": nfe,
            "peak_memory_mib": round(peak, 1), "peak_memory_kind": "GPU allocated" if torch.cuda.is_available() else f"peak RSS of a fresh process at batch {max(BATCHES)}",
            "memory_after_load_mib": None if memory["loaded_mib"] is None else round(memory["loaded_mib"], 1)}


def weights_sha256(name: str) -> str | None:
    """The sha256 of a model's weights file, from its config.json: what a cached report was measured on."""
    config = Path(shipped_models().get(name, Path(name))) / "config.json"
    try:
        return json.loads(config.read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _cache_complete(name: str, split: str, n: int, cache: Path) -> bool:
    folder = sample_folder(trilemma.load(name), name, split, cache)
    return all((folder / f"{i:06d}.png").is_file() for i in range(n))


def training_minutes(name: str) -> float | None:
    folder = shipped_models().get(name, Path(name))
    for file, key in (("scores.json", "training_minutes"), ("training.json", "train_seconds")):
        path = Path(folder) / file
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if value is not None:
                return round(value / 60, 1) if key == "train_seconds" else value
    return None


FEATURES = ("shapes", "clip")


def evaluate(name: str, split: str = "test", n: int = 500, out: Path | None = None, cache: Path = Path("reports/eval-cache"),
             inception_weights: str | None = None, k: int = 5, progress: bool = True, with_cost: bool = True,
             clip: str | Path | None = None, features: str = "shapes") -> dict:
    """clip: the CLIP of the CLIP score (and of features="clip"): a shipped CLIP's name or a local CLIP folder;
    None: shapes-clip when shipped, else no CLIP score (the report says null). features: "shapes" (the Shapes
    feature network, or Inception given its weights) or "clip" (the CLIP's image embeddings: FD_CLIP)."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
    if features == "clip" and inception_weights:
        raise ValueError("--inception-weights and --features clip name two feature spaces; give one")
    label = clip_label(clip) if clip is not None else default_clip()  # a bad CLIP fails here, before any sampling
    if features == "clip" and label is None:
        raise ValueError("--features clip needs a CLIP: give --clip NAME_OR_DIR (a local transformers CLIP folder), "
                         "or ship shapes-clip")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = require_generator(trilemma.load(name), name)
    prompts, images = cached_samples(model, name, split, n, cache, progress=progress)
    alignment = score_samples(prompts, images)
    network = load_feature_network(inception_weights, clip=label if features == "clip" else None)
    real = real_renders(split, n, model.resolution)
    fidelity = fid_kid(network, real, images)
    if not isinstance(network, dict):
        fidelity.update(precision_recall_density_coverage(extract(network, real), extract(network, images), k))
    report = {"model": name, "family": model.family, "model_class": type(model).__name__, "split": split, "n": n,
              "features": f"clip:{label}" if features == "clip" else "inception-v3" if inception_weights else "shapes-features",
              "alignment": alignment, "pass_rate": alignment["overall"]["pass_rate"], "scorer_version": SCORER_VERSION,
              "clip_score": measure_clip_score(images, prompts, label) if label is not None else None,
              "fidelity": fidelity, "training_minutes": training_minutes(name), "weights_sha256": weights_sha256(name)}
    if with_cost:
        report["cost"] = measure_cost(model, name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", report)
        (out / "report.md").write_text(report_markdown(report))
    return report


def report_markdown(r: dict) -> str:
    a, f = r["alignment"], r["fidelity"]
    lines = [f"# {r['model']} on `{r['split']}` (n = {r['n']}, one sample per prompt)", "",
             "| category | pass rate | n |", "| --- | --- | --- |"]
    lines += [f"| {k} | {_fmt(v['pass_rate'])} | {v['n']} |" for k, v in a.items() if isinstance(v, dict) and "pass_rate" in v]
    cs = r.get("clip_score")
    lines += ["", f"CLIP score: {_fmt(cs['value'], 2)} ({cs['clip']}, n = {cs['n']}; 100 * max(cos, 0), averaged)." if cs
              else "CLIP score: n/a (no CLIP: give --clip NAME_OR_DIR, or ship shapes-clip)."]
    lines += ["", f"Features: {r['features']}.", "", "| FID | KID | precision | recall | density | coverage |", "| --- | --- | --- | --- | --- | --- |",
              f"| {f['fid']:.2f} | {f['kid']:.4f} | {f.get('precision', float('nan')):.3f} | {f.get('recall', float('nan')):.3f} | "
              f"{f.get('density', float('nan')):.3f} | {f.get('coverage', float('nan')):.3f} |"]
    if "cost" in r:
        c = r["cost"]
        lines += ["", "| parameters | s/image (batch 1) | images/s (batch 1) | images/s (best batch) | NFE/image | peak memory | training |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| {c['parameters'] / 1e6:.2f}M | {c['seconds_per_image_batch1']:.3f} | {c['images_per_second_batch1']:.2f} | "
                  f"{c['images_per_second_best']:.2f} (batch {c['best_batch']}) | {c['function_evaluations_per_image']} | "
                  f"{c['peak_memory_mib']:.0f} MiB ({c['peak_memory_kind']}) | {r['training_minutes']} min |"]
    return "\n".join(lines) + "\n"


def _card_score(name: str, split: str) -> float | None:
    """A shipped model's pass rate on `split` from its card's scores.json (bench/score_model.py, 500 prompts)."""
    path = Path(shipped_models().get(name, Path(name))) / "scores.json"
    return json.loads(path.read_text()).get(split) if path.is_file() else None


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compare(names: list[str], out: Path, split: str = "test", n: int = 500, cache: Path = Path("reports/eval-cache"),
            reuse: bool = True, grid_prompts: int = 8, progress: bool = True, clip: str | Path | None = None) -> Path:
    """evaluate each model (or reuse its cached report), then the table, the plots and the grid. clip: the CLIP of
    the CLIP score column (None: shapes-clip when shipped, else the column says n/a); a cached report without a
    CLIP score of this CLIP gets one from its cached samples, its other numbers kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clip_name = clip_label(clip) if clip is not None else default_clip()  # a bad CLIP fails here, before any work
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for name in names:
        folder = out / Path(name).name
        cached = folder / "report.json"
        if reuse and cached.is_file():
            report = json.loads(cached.read_text())
            # A report measured on other weights (a model retrained or fine-tuned under the same name) is measured
            # again. One from before the hash was recorded is trusted only if the sample cache of the current
            # weights holds all its samples (they were drawn by these weights); a model without a hash is measured.
            current = weights_sha256(name)
            if "weights_sha256" in report:
                same_weights = current is not None and report["weights_sha256"] == current
            else:
                same_weights = current is not None and _cache_complete(name, split, n, cache)
            if same_weights and report.get("split") == split and report.get("n") == n \
                    and report.get("features", "shapes-features") == "shapes-features":
                changed = "weights_sha256" not in report
                report["weights_sha256"] = weights_sha256(name)
                if report.get("scorer_version", 1) != SCORER_VERSION:  # pass rates from an older scorer
                    report = rescore(report, cache, progress)
                    if report is None:  # its samples are gone: measure everything again below
                        reports.append(evaluate(name, split, n, folder, cache, progress=progress, clip=clip_name))
                        continue
                    changed = True
                if clip_name is not None and not clip_score_current(report, clip_name):  # no CLIP score, or another CLIP's
                    report, changed = add_clip_score(report, clip_name, cache, progress), True
                if changed:
                    write_json(cached, report)
                    (folder / "report.md").write_text(report_markdown(report))
                reports.append(report)
                continue
        reports.append(evaluate(name, split, n, folder, cache, progress=progress, clip=clip_name))
    # The floor: real renders of other scenes of the split against the same reference. FID's estimate is
    # biased upward at finite n, so a model is as close to real as FID at this n can tell when it sits there.
    network = load_feature_network()
    reference, others = real_renders(split, n), [render(sample_scene(split, n + i)) for i in range(n)]
    floor = fid_kid(network, reference, others)
    floor.update(precision_recall_density_coverage(extract(network, reference), extract(network, others), 5))
    # The CLIP score's reference: the real renders with their own prompts (what a model drawing every scene right gets).
    floor_clip = measure_clip_score(reference, test_prompts(split, n), clip_name) if clip_name is not None else None
    novel_from_card = all(r["alignment"]["novel"]["pass_rate"] is None for r in reports)
    moved = {r["previous_scorer"]["version"] for r in reports if "previous_scorer" in r}  # re-scored: show what moved
    header = ("| model | family | parameters | pass rate | " +
              (f"was (scorer v{'/'.join(map(str, sorted(moved)))}) | " if moved else "") +
              ("`test-novel` (card)" if novel_from_card else "held-out pairs") +
              " | CLIP score | FID | KID | precision | recall | density | coverage | "
              "images/s (batch 1) | images/s (best) | NFE/image | peak memory | training |")
    rows = [header, "|" + " --- |" * (header.count("|") - 1)]
    for r in reports:
        f, c = r["fidelity"], r["cost"]
        novel = _card_score(r["model"], "test-novel") if novel_from_card else r["alignment"]["novel"]["pass_rate"]
        was = (_fmt(r.get("previous_scorer", {}).get("pass_rate")) + " | ") if moved else ""
        rows.append(f"| {Path(r['model']).name} | {r['family']} | {c['parameters'] / 1e6:.1f}M | {_fmt(r['pass_rate'])} | {was}"
                    f"{_fmt(novel)} | {_fmt(r['clip_score']['value'], 2) if clip_score_current(r, clip_name) else 'n/a'} | {f['fid']:.2f} | {f['kid']:.4f} | {_fmt(f.get('precision'))} | "
                    f"{_fmt(f.get('recall'))} | {_fmt(f.get('density'))} | {_fmt(f.get('coverage'))} | {c['images_per_second_batch1']:.2f} | "
                    f"{c['images_per_second_best']:.2f} | {c['function_evaluations_per_image']} | {c['peak_memory_mib']:.0f} MiB | "
                    f"{r['training_minutes']} min |")
    rows.append(f"| real renders of other scenes (the floor) | | | | | {'| ' if moved else ''}"
                f"{_fmt(floor_clip['value'], 2) if floor_clip else 'n/a'} | {floor['fid']:.2f} | {floor['kid']:.4f} | "
                f"{floor['precision']:.3f} | {floor['recall']:.3f} | {floor['density']:.3f} | {floor['coverage']:.3f} | | | | | |")
    write_json(out / "floor.json", {"split": split, "n": n, **floor, "clip_score": floor_clip})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in reports:
        c, f, label = r["cost"], r["fidelity"], Path(r["model"]).name
        size = 30 + 400 * c["parameters"] / max(x["cost"]["parameters"] for x in reports)
        axes[0].scatter(c["images_per_second_best"], r["pass_rate"], s=size, alpha=0.6, label=label)
        axes[1].scatter(c["images_per_second_best"], f["fid"], s=size, alpha=0.6, label=label)
        if "precision" in f:
            axes[2].scatter(f["recall"], f["precision"], s=size, alpha=0.6, label=label)
    axes[0].set(xscale="log", xlabel="images per second (best batch, log)", ylabel=f"pass rate on {split}", title="alignment vs speed")
    axes[1].axhline(floor["fid"], ls="--", color="gray", label=f"real vs real at n = {n}")
    axes[1].legend(fontsize=8)
    axes[1].set(xscale="log", xlabel="images per second (best batch, log)", ylabel="FID (Shapes features)", title="fidelity vs speed")
    # Zoomed to the points (with the floor's real-vs-real pair as a cross): on Shapes they crowd near 1.
    axes[2].scatter(floor["recall"], floor["precision"], marker="x", color="black", label="real vs real")
    low = min([floor["recall"], floor["precision"]] + [v for r in reports for v in (r["fidelity"].get("recall", 1), r["fidelity"].get("precision", 1))])
    low = max(0.0, low - 0.05)
    axes[2].set(xlabel="recall (mode coverage)", ylabel="precision (fidelity)", xlim=(low, 1.01), ylim=(low, 1.01), title="precision vs recall")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("point size: parameters")
    fig.tight_layout()
    fig.savefig(out / "trilemma.png", dpi=120)
    plt.close(fig)
    prompts = test_prompts(split, grid_prompts)
    images, captions = [], []
    for name in names:
        model = require_generator(trilemma.load(name), name)
        images += model.generate(prompts, seed=0)
        captions += [f"{Path(name).name}: {p}" if i == 0 else p for i, p in enumerate(prompts)]
    image_grid(images, captions, cols=grid_prompts).save(out / "samples.png")
    command = "trilemma compare " + " ".join(names) + f" --split {split} --n {n} --out {out}" + (f" --clip {clip}" if clip is not None else "")
    clip_note = (f"CLIP score: torchmetrics' (100 * max(cos, 0), averaged over the prompts) with `{clip_name}`; in the floor row, "
                 f"the reference renders scored with their own prompts (what a model that drew every scene right would get). "
                 if clip_name is not None else "CLIP score: n/a, no CLIP is shipped (pass --clip NAME_OR_DIR). ")
    (out / "COMPARE.md").write_text(
        f"# The generative trilemma on Shapes\n\nRegenerate: `{command}`\n\n"
        f"Split `{split}`, {n} prompts, one sample per prompt (seed = index); FID and friends against renders of the "
        f"same scenes on the shipped Shapes feature network; speed on this machine ({torch.get_num_threads()} threads). "
        f"The last row is the floor: renders of {n} other scenes against the same reference (FID is biased upward at finite n). "
        f"Peak memory: RSS of a fresh process that loads the model and draws batch {max(BATCHES)}; NFE: rows through the "
        f"core network (U-Net, GPT or generator) per image, guided pairs counted twice. {clip_note}\n\n"
        + "\n".join(rows) + "\n\n![trilemma](trilemma.png)\n\n![samples: one row per model, same prompts and seeds](samples.png)\n")
    return out / "COMPARE.md"
