"""What an MMDiT costs against the U-Net on the same latents: parameters, forward FLOPs per image and training
images/s, every network timed in this one process (ratios, not absolute speeds, are what carry to another machine).

    python bench/mmdit_sizes.py --out reports/mmdit-sizes.json

The networks are built by LatentDiffusion itself (the shipped shapes-ldm-f8 recipe's U-Net, 4 x 8 x 8 latents,
and MMDiTs of several widths and depths), with the jointly trained text encoder; a training step is the model's
own (batch 64, AdamW), FLOPs are torch's count of one forward pass of the denoiser (text encoder excluded).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trilemma.diffusion.latent_diffusion import LatentDiffusion

RECIPE = json.loads((Path(__file__).parent.parent / "configs" / "shapes-ldm-f8.json").read_text())["model"]
ARMS = {
    "unet (shipped shapes-ldm-f8)": {},
    "mmdit w128 L4 p1": {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32, "patch_size": 1},
    "mmdit w192 L6 p1": {"num_layers": 6, "num_attention_heads": 6, "attention_head_dim": 32, "patch_size": 1},
    "mmdit w256 L6 p1": {"num_layers": 6, "num_attention_heads": 8, "attention_head_dim": 32, "patch_size": 1},
    "mmdit w384 L8 p2": {"num_layers": 8, "num_attention_heads": 12, "attention_head_dim": 32, "patch_size": 2},
}


def measure(transformer: dict, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model_config = {**RECIPE, **({"backbone": "mmdit", "prediction_type": "flow", "transformer": transformer}
                                 if transformer else {})}
    model = LatentDiffusion.from_config(model_config)
    latents = torch.randn(batch, 4, 8, 8)
    prompts = ["a red circle to the left of two blue squares"] * batch
    states, mask = model.encode_text(prompts)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.denoise(latents, torch.full((batch,), 500.0), states, mask)
    optimizer = model.configure_optimizers(1e-4)["model"]
    batch_data = {"latents": latents, "text": prompts}
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        model.training_step(batch_data, "model")["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = (time.perf_counter() - t0) / steps
    return {"parameters": sum(p.numel() for p in model.network.parameters()),
            "mflop_per_image": round(counter.get_total_flops() / batch / 1e6, 1),
            "train_seconds_per_step": round(seconds, 4), "train_images_per_second": round(batch / seconds, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/mmdit-sizes.json")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name, transformer in ARMS.items():
        rows[name] = measure(transformer, args.batch, args.steps)
        print(name, rows[name], flush=True)
    base = rows["unet (shipped shapes-ldm-f8)"]["train_seconds_per_step"]
    for row in rows.values():
        row["step_cost_vs_unet"] = round(row["train_seconds_per_step"] / base, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "batch": args.batch, "latents": "4 x 8 x 8",
                                          "networks": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
