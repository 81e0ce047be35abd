"""Does the first stage keep the objects? The scorer's pass rate on reconstructions.

    python bench/autoencoder_reconstruction.py runs/shapes-ldm-autoencoder/final --n 500

Renders the first N scenes of `test`, encodes and decodes them, and scores
each reconstruction against the scene's prompt. A latent diffusion model can
score no better than its autoencoder reconstructs.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from trilemma.shapes.dataset import ShapesDataset
from trilemma.shapes.scorer import score_image, summarize
from trilemma.shapes.scenes import parse_prompt
from trilemma.model import TrainableModel, to_pil


def reconstruction_report(folder: str, n: int, split: str = "test") -> dict:
    model = TrainableModel.from_pretrained(folder)
    data = ShapesDataset(split, model.config.resolution, paraphrase=False)
    records, codes, t0 = [], [], time.perf_counter()
    for start in range(0, n, 100):
        items = [data[i] for i in range(start, min(n, start + 100))]
        x = torch.stack([it["pixel_values"] for it in items])
        with torch.no_grad():
            latents = model.encode(x)
            if not latents.is_floating_point():  # VQ token indices
                codes.append(latents.flatten())
            recon = to_pil(model.decode(latents))
        for it, image in zip(items, recon):
            parsed = parse_prompt(it["prompt"])
            records.append({"category": parsed.category, "novel": parsed.novel, "passed": score_image(image, parsed).passed})
    report = {"autoencoder": folder, "split": split, "n": n, "latent_shape": list(latents.shape[1:]),
              "parameters": model.num_parameters(), "seconds": round(time.perf_counter() - t0, 1), "summary": summarize(records)}
    if codes:  # codebook usage over these images: perplexity of the code histogram, share of codes used
        counts = torch.bincount(torch.cat(codes), minlength=model.config.codebook_size).double()
        probs = counts / counts.sum()
        report["codebook"] = {"size": model.config.codebook_size, "used_share": round(float((counts > 0).double().mean()), 4),
                              "perplexity": round(float(torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum())), 1)}
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("autoencoder", nargs="+")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    reports = [reconstruction_report(f, args.n, args.split) for f in args.autoencoder]
    for r in reports:
        rates = {k: v["pass_rate"] for k, v in r["summary"].items() if k != "by_pairs"}
        print(f"{r['autoencoder']}: latent {r['latent_shape']}, reconstruction pass rate {json.dumps(rates)}", r.get("codebook", ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
