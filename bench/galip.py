"""GALIP's claims, measured on Shapes: against DF-GAN (quality, held-out pairs, learnable parameters, training
minutes and images to a score), against latent diffusion (sampling speed as a ratio in one run), and the
smoothness of its latent space (interpolation strips, and how evenly an image changes along a path).

    python bench/galip.py --galip shapes-galip --dfgan shapes-dfgan --ldm shapes-ldm-f8 shapes-ldm \
        --scores reports/shapes-galip-scores.json reports/rescore/shapes-dfgan-scores.json \
        --curves reports/shapes-galip-curve.json reports/shapes-dfgan-curve.json --out reports/galip

The pass rates come from `bench/score_model.py` (500 prompts per split) and the curves from
`bench/training_curve.py`: this script reads their JSON, and measures the rest itself. Speeds are images per
second of `generate` on one prompt, the median of timed runs after a warm-up, all models in this one run.

The paper's claims: about 3% of the training data and 6% of the learnable parameters of large autoregressive
and diffusion models, sampling about 120x faster than latent diffusion, and a smooth latent space.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds  # noqa: E402

import trilemma  # noqa: E402
from trilemma.grid import image_grid  # noqa: E402

PROMPT = "a small purple triangle and a large cyan square"
# Strips between prompts of the train split (seen pairs), as the DF-GAN card's.
STRIPS = {"a": ("a red circle", "a blue square"), "b": ("two yellow triangles", "three green circles")}
# Modules that a model borrows frozen from another shipped model (not learnt for it), by class.
BORROWED = {"GALIP": ("clip", "autoencoder"), "DFGAN": ("autoencoder",)}


def parameter_counts(model) -> dict:
    """Parameters per top-level module; `learnt` sums the ones trained for this model (a frozen encoder trained
    for it, as DF-GAN's sentence encoder, counts; CLIP and an autoencoder borrowed from another model do not)."""
    borrowed = BORROWED.get(type(model).__name__, ())
    modules = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    modules = {k: v for k, v in modules.items() if v}
    learnt = sum(v for k, v in modules.items() if k not in borrowed)
    return {"modules": modules, "learnt": learnt, "total": sum(modules.values()), "borrowed": list(borrowed)}


def images_per_second(model, batch: int, repeats: int) -> float:
    return batch / median_seconds(lambda: model.generate([PROMPT] * batch, seed=0), repeats)


def to_array(images) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])


def path_evenness(model, n_paths: int, steps: int, mode: str) -> dict:
    """Along `n_paths` interpolation paths of `steps` images, the mean absolute pixel change between neighbours:
    its total along the path, and max / mean (1.0 when the image changes evenly; a jump makes it large)."""
    from trilemma.shapes.export import test_prompts

    prompts = test_prompts("train", 2 * n_paths)
    totals, ratios = [], []
    for i in range(n_paths):
        strip = to_array(model.interpolate(prompts[2 * i], prompts[2 * i + 1], steps=steps, seed=1000 + 2 * i, mode=mode))
        d = np.abs(np.diff(strip, axis=0)).mean(axis=(1, 2, 3))
        totals.append(float(d.sum()))
        ratios.append(float(d.max() / max(d.mean(), 1e-8)))
    return {"paths": n_paths, "steps": steps, "mean_path_change": float(np.mean(totals)),
            "max_over_mean_step": float(np.mean(ratios)), "max_over_mean_step_worst": float(np.max(ratios))}


def first_reaching(curve: dict, score: float) -> dict | None:
    """The first point of a training curve whose overall pass rate reaches `score`."""
    for point in curve["points"]:
        if point["overall"] >= score:
            return point
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--galip", default="shapes-galip")
    ap.add_argument("--dfgan", default="shapes-dfgan")
    ap.add_argument("--ldm", nargs="+", default=["shapes-ldm-f8"])
    ap.add_argument("--scores", nargs=2, metavar=("GALIP", "DFGAN"), required=True, help="score_model.py JSON of each")
    ap.add_argument("--curves", nargs=2, metavar=("GALIP", "DFGAN"), required=True, help="training_curve.py JSON of each")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paths", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    (out / "strips").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    names = {"galip": args.galip, "dfgan": args.dfgan, **{f"ldm:{m}": m for m in args.ldm}}
    models = {k: trilemma.load(v).eval() for k, v in names.items()}
    result = {"command": "python " + " ".join(sys.argv), "models": names, "torch_threads": torch.get_num_threads()}

    # Parameters.
    result["parameters"] = {k: parameter_counts(m) for k, m in models.items()}
    g = result["parameters"]["galip"]["learnt"]
    result["learnt_parameter_ratio"] = {k: g / p["learnt"] for k, p in result["parameters"].items() if k != "galip"}

    # Sampling speed, one run; ratios GALIP / others at the same batch.
    speed = {k: {str(b): images_per_second(m, b, args.repeats) for b in args.batches} for k, m in models.items()}
    result["images_per_second"] = speed
    result["speed_ratio"] = {k: {b: speed["galip"][b] / speed[k][b] for b in speed[k]} for k in speed if k != "galip"}

    # Quality, from the score files.
    scores = [json.loads(Path(p).read_text()) for p in args.scores]
    result["scores"] = {}
    for key, s, path in zip(("galip", "dfgan"), scores, args.scores):
        result["scores"][key] = {"file": path, "scorer_version": s.get("scorer_version", 1), "n": s["n"],
                                 **{split: {k: v["pass_rate"] for k, v in s["splits"][split]["summary"].items()
                                            if k in ("overall", "single", "pair", "count", "position")}
                                    for split in ("test", "test-novel")}}

    # Training: minutes and images to the other's score. A curve without a scorer version predates scorer v2 (v1
    # passed lumpy shapes); a threshold read across versions is marked so.
    curves = [json.loads(Path(p).read_text()) for p in args.curves]
    versions = {"galip_curve": curves[0].get("scorer_version", 1), "dfgan_curve": curves[1].get("scorer_version", 1),
                "galip_scores": result["scores"]["galip"]["scorer_version"], "dfgan_scores": result["scores"]["dfgan"]["scorer_version"]}
    dfgan_final = result["scores"]["dfgan"]["test"]["overall"]
    galip_final = result["scores"]["galip"]["test"]["overall"]
    reach = first_reaching(curves[0], dfgan_final)
    result["training"] = {
        "galip_curve": args.curves[0], "dfgan_curve": args.curves[1],
        "galip_reaches_dfgan_final": ({"score": dfgan_final, "step": reach["step"], "minutes": reach["minutes"]}
                                      if reach else {"score": dfgan_final, "reached": False}),
        "dfgan_reaches_galip_final": (lambda p: {"score": galip_final, "step": p["step"], "minutes": p["minutes"]}
                                      if p else {"score": galip_final, "reached": False})(first_reaching(curves[1], galip_final)),
        "galip_last": curves[0]["points"][-1], "dfgan_last": curves[1]["points"][-1],
        "scorer_versions": versions,
        "across_scorer_versions": len(set(versions.values())) > 1,
        "curve_prompts": [c["n"] for c in curves],
    }

    # Latent space: strips (text, z, both) for both GANs, and how evenly images change along z and text paths.
    for key in ("galip", "dfgan"):
        for name, (a, b) in STRIPS.items():
            rows, captions = [], []
            for mode in ("text", "z", "both"):
                strip = models[key].interpolate(a, b, steps=8, seed=0, mode=mode)
                rows += strip
                captions += [f"{mode}" if i == 0 else "" for i in range(len(strip))]
            image_grid(rows, captions, cols=8).save(out / "strips" / f"{key}-{name}.png")
    result["strips"] = {"pairs": STRIPS, "files": sorted(p.name for p in (out / "strips").glob("*.png"))}
    result["path_evenness"] = {key: {mode: path_evenness(models[key], args.paths, 16, mode) for mode in ("z", "text")}
                               for key in ("galip", "dfgan")}

    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("learnt_parameter_ratio", "speed_ratio", "training", "path_evenness")}, indent=2))


if __name__ == "__main__":
    main()
