"""The editing benchmark on Shapes: replace one object of a test scene and measure what each editing method does.

    python bench/editing.py --inpaint shapes-ldm-f8-inpaint --base shapes-ldm-f8 --extra-repaint shapes-ldm shapes-imagen \
        --strengths 0.4 0.6 0.8 --n 200 --out reports/editing

For each of the first scenes of `test` with one or two objects (single, pair and position prompts; counts are
skipped, since one changed object would break "three red circles"), one object is picked and given a new color,
a new shape, or both (the three kinds in turn), chosen either among the pairs seen in training or among the
held-out pairs (`docs/shapes.md`) that no training image shows. The mask is that object's box grown by 2 px.
The edited scene's canonical prompt is the request; the exact Shapes scorer judges the result against it (so the
untouched object must survive too), and the pixels outside the mask are compared with the input: mean absolute
difference (0-255) and PSNR. Methods, all from the same seeds:

- `inpaint`: the inpainting model (GLIDE / SD-inpainting: the mask and the masked image are inputs);
- `repaint`: RePaint with the plain text-to-image model (no training), DPM-Solver++ 25 steps, and `repaint-r4`:
  with RePaint's resampling (4 per step, DDIM 25 steps); `repaint-<model>` for each --extra-repaint model;
- `+paste`: the same images with the input's pixels put back outside the mask (as `trilemma edit --keep-unmasked`);
- `generate`: plain text-to-image from the edited prompt (no input image): the upper bound on change;
- `sdedit-S`: image-to-image from the whole input at strength S (no mask);
- `input`: the unedited input, scored against the edited prompt: the benchmark's own check (it should pass ~0).

The autoencoder's own round trip (encode and decode the input) is reported as the floor of the unmasked change
that any latent method without pasting can reach.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import trilemma
from trilemma.diffusion.editing import box_mask, image_tensor
from trilemma.grid import image_grid
from trilemma.shapes.scenes import HELD_OUT_PAIRS, SEEN_PAIRS, ShapeObject, Scene, render, sample_scene
from trilemma.shapes.scorer import SCORER_VERSION, score_image

KINDS = ("color", "shape", "both")
GROW = 2  # pixels around the object's box


def edits(n: int, target: str, seed: int = 0) -> list[dict]:
    """n edit tasks: a test scene, the object to replace, its new (color, shape), the mask box, the new prompt."""
    pool = HELD_OUT_PAIRS if target == "held-out" else SEEN_PAIRS
    rng = np.random.default_rng([seed, 0 if target == "seen" else 1])
    out, index = [], 0
    while len(out) < n:
        scene = sample_scene("test", index)
        index += 1
        if scene.category == "count":
            continue
        kind = KINDS[len(out) % len(KINDS)]
        k = int(rng.integers(len(scene.objects)))
        old = scene.objects[k]
        taken = {(o.color, o.shape) for o in scene.objects}
        options = [(c, s) for c, s in pool if (c, s) not in taken
                   and {"color": c != old.color and s == old.shape, "shape": c == old.color and s != old.shape,
                        "both": c != old.color and s != old.shape}[kind]]
        if not options:
            continue
        color, shape = options[int(rng.integers(len(options)))]
        objects = [ShapeObject(color, shape, o.size, o.s, o.x, o.y, o.say_size) if i == k else o
                   for i, o in enumerate(scene.objects)]
        edited = Scene(scene.category, objects, scene.relation, scene.split, scene.index, scene.seed)
        box = (max(0, math.floor(old.x * 64) - GROW), max(0, math.floor(old.y * 64) - GROW),
               min(64, math.ceil((old.x + old.s) * 64) + GROW), min(64, math.ceil((old.y + old.s) * 64) + GROW))
        out.append({"scene": scene.index, "category": scene.category, "kind": kind, "target": target,
                    "from": f"{old.color} {old.shape}", "to": f"{color} {shape}", "box": box,
                    "source_prompt": scene.prompt, "prompt": edited.prompt, "image": render(scene)})
    return out


def unmasked_change(result: Image.Image, source: Image.Image, keep: np.ndarray) -> tuple[float, float]:
    """(mean absolute difference on 0-255, PSNR in dB) over the pixels outside the mask."""
    a = np.asarray(result, dtype=np.float64)[keep]
    b = np.asarray(source, dtype=np.float64)[keep]
    mse = float(((a - b) ** 2).mean())
    return float(np.abs(a - b).mean()), (99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse))


def paste(result: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    return Image.composite(result, source, mask)


def run_method(name: str, draw, tasks: list[dict], batch: int = 100) -> list[Image.Image]:
    images = []
    for start in range(0, len(tasks), batch):
        images += draw(tasks[start:start + batch], start)
    return images


def summarize(rows: list[dict]) -> dict:
    def block(rs):
        return {"n": len(rs), "pass": round(float(np.mean([r["passed"] for r in rs])), 3),
                "unmasked_mad": round(float(np.mean([r["mad"] for r in rs])), 2),
                "unmasked_psnr": round(float(np.mean([min(r["psnr"], 60.0) for r in rs])), 1)}
    out = block(rows)
    out["by_kind"] = {k: block([r for r in rows if r["kind"] == k]) for k in KINDS}
    out["by_category"] = {c: block([r for r in rows if r["category"] == c]) for c in ("single", "pair", "position")
                          if any(r["category"] == c for r in rows)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inpaint", default="shapes-ldm-f8-inpaint")
    ap.add_argument("--base", default="shapes-ldm-f8", help="the text-to-image model for RePaint, generate and SDEdit")
    ap.add_argument("--extra-repaint", nargs="*", default=[], help="more models to run RePaint with")
    ap.add_argument("--strengths", nargs="*", type=float, default=[0.4, 0.6, 0.8])
    ap.add_argument("--n", type=int, default=200, help="edits per target set (seen, held-out)")
    ap.add_argument("--out", default="reports/editing")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inpaint, base = trilemma.load(args.inpaint), trilemma.load(args.base)
    extra = {m: trilemma.load(m) for m in args.extra_repaint}

    def inpainter(model, **kw):
        def draw(tasks, start):
            # A batch of different edits (an image and a mask per prompt); task k's seed is k.
            return model.inpaint([t["prompt"] for t in tasks], [t["image"] for t in tasks],
                                 [box_mask(t["box"], 64, 64) for t in tasks], seed=start, **kw)
        return draw

    def sdedit(strength):
        def draw(tasks, start):
            return base.generate([t["prompt"] for t in tasks], seed=start, init_image=[t["image"] for t in tasks],
                                 strength=strength)
        return draw

    # "input": the unedited scene against the edited prompt, the check that the benchmark asks for a change the
    # scorer sees (it should pass almost none).
    methods = {"input": lambda tasks, start: [t["image"] for t in tasks], "inpaint": inpainter(inpaint), "repaint": inpainter(base, method="repaint"),
               "repaint-r4": inpainter(base, method="repaint", sampler="ddim", resample=4)}
    methods.update({f"repaint-{m}": inpainter(model, method="repaint") for m, model in extra.items()})
    methods["generate"] = lambda tasks, start: base.generate([t["prompt"] for t in tasks], seed=start)
    methods.update({f"sdedit-{s:g}": sdedit(s) for s in args.strengths})

    results, examples, timing = {}, {}, {}
    for target in ("seen", "held-out"):
        tasks = edits(args.n, target)
        masks = [box_mask(t["box"], 64, 64) for t in tasks]
        keeps = [np.asarray(m) < 128 for m in masks]
        with torch.no_grad():  # the floor: the autoencoder's round trip of the input
            recon = [base.autoencoder.decode(base.autoencoder.encode(image_tensor(t["image"], 64))) for t in tasks]
        floor = [unmasked_change(Image.fromarray(((r[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()),
                                 t["image"], k) for r, t, k in zip(recon, tasks, keeps)]
        results[target] = {"autoencoder_round_trip": {"unmasked_mad": round(float(np.mean([f[0] for f in floor])), 2),
                                                      "unmasked_psnr": round(float(np.mean([f[1] for f in floor])), 1)}}
        examples[target] = {"input": [t["image"] for t in tasks[:8]], "mask": [m.convert("RGB") for m in masks[:8]]}
        for name, draw in methods.items():
            t0 = time.perf_counter()
            images = run_method(name, draw, tasks)
            timing.setdefault(name, 0.0)
            timing[name] += time.perf_counter() - t0
            variants = {name: images}
            if name.startswith(("inpaint", "repaint")):
                variants[name + "+paste"] = [paste(im, t["image"], m) for im, t, m in zip(images, tasks, masks)]
            for label, ims in variants.items():
                rows = []
                for t, im, keep in zip(tasks, ims, keeps):
                    mad, psnr = unmasked_change(im, t["image"], keep)
                    rows.append({"kind": t["kind"], "category": t["category"], "passed": score_image(im, t["prompt"]).passed,
                                 "mad": mad, "psnr": psnr})
                results[target][label] = summarize(rows)
                examples[target][label] = ims[:8]
            print(target, name, results[target][name]["pass"], results[target][name]["unmasked_mad"], flush=True)
        (out / f"tasks-{target}.jsonl").write_text("".join(json.dumps({k: v for k, v in t.items() if k != "image"}) + "\n"
                                                           for t in tasks))
    for target, ex in examples.items():
        names = list(ex)
        rows = min(8, len(ex["input"]))
        image_grid([ex[name][j] for j in range(rows) for name in names], [name if j == 0 else "" for j in range(rows) for name in names],
                   cols=len(names)).save(out / f"examples-{target}.png")
    report = {"scorer_version": SCORER_VERSION, "n_per_target": args.n, "models": {"inpaint": args.inpaint, "base": args.base,
              "extra_repaint": args.extra_repaint}, "seconds": {k: round(v, 1) for k, v in timing.items()},
              "results": results, "command": "python bench/editing.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items())}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({t: {m: (r["pass"], r["unmasked_mad"]) for m, r in res.items() if "pass" in r} for t, res in results.items()},
                     indent=1))


if __name__ == "__main__":
    main()
