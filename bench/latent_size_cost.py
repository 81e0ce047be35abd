"""What the latent size does to diffusion cost: the same U-Net on 16x16 and 8x8 latents.

    python bench/latent_size_cost.py --out reports/latent-size-cost.json

Builds the shipped recipe's U-Net and text encoder for a 4x16x16 latent
(64 px, autoencoder down-sampling 4) and a 4x8x8 latent (down-sampling 8),
and times, in the same run, a training step at batch 64 and a sampling pass
(DPM-Solver++ 25 steps, guidance) at batch 16. Medians of several repeats;
ratios against the 16x16 baseline.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds  # noqa: E402

from trilemma.diffusion.latent_diffusion import LatentDiffusion

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "shapes-ldm.json"


def measure(block_out_channels: list[int], repeats: int) -> dict:
    config = json.loads(RECIPE.read_text())["model"]
    config["autoencoder"] = dict(config["autoencoder"], block_out_channels=block_out_channels)
    torch.manual_seed(0)
    model = LatentDiffusion.from_config(config)
    opt = model.configure_optimizers(1e-4)["model"]
    shape = (64, model.latent_channels, model.latent_size, model.latent_size)
    batch = {"latents": torch.randn(shape), "text": ["a red circle above a blue square"] * 64}

    def train_step():
        opt.zero_grad()
        model.training_step(batch, "model")["loss"].backward()
        opt.step()

    model.train()
    train = median_seconds(train_step, repeats)
    model.eval()
    sample = median_seconds(lambda: model.generate(["three green circles"] * 16, steps=25), max(1, repeats // 2))
    return {"latent": list(shape[1:]), "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
            "train_step_seconds_b64": round(train, 3), "train_images_per_second": round(64 / train, 1),
            "sample_seconds_b16": round(sample, 3), "sample_images_per_second": round(16 / sample, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = measure([32, 32, 64], args.repeats)
    small = measure([32, 32, 64, 64], args.repeats)
    report = {"16x16": base, "8x8": small,
              "ratio_8x8_over_16x16": {"train_speed": round(small["train_images_per_second"] / base["train_images_per_second"], 2),
                                       "sample_speed": round(small["sample_images_per_second"] / base["sample_images_per_second"], 2)}}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
