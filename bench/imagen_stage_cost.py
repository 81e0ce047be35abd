"""What each cascade stage costs, to choose the base size and the SR crop by measuring.

    python bench/imagen_stage_cost.py --out reports/imagen-stage-cost.json

Times, in one run, a training step (batch 64) of: base U-Nets of three
(64, 128, 128) and four (32, 64, 128, 128) levels at 16 px and at 32 px; the
SR stage on whole 64 px images and on 32 px crops. Then sampling (batch 16, guidance) of each base
and of the SR stage. Medians of several repeats; ratios against the 16 px
base measured in the same run.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds  # noqa: E402

from trilemma.diffusion.imagen import ImagenCascade

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "shapes-imagen.json"
PROMPT = "a red circle above a blue square"


def build(**overrides) -> ImagenCascade:
    config = dict(json.loads(RECIPE.read_text())["model"], **overrides)
    torch.manual_seed(0)
    return ImagenCascade.from_config(config)


def train_cost(model: ImagenCascade, stage: int, repeats: int) -> float:
    opt = model.configure_optimizers(1e-4)[f"stage{stage}"]
    batch = {"pixel_values": torch.rand(64, 3, 64, 64) * 2 - 1, "text": [PROMPT] * 64}
    model.train()

    def step():
        opt.zero_grad()
        model.training_step(batch, f"stage{stage}")["loss"].backward()
        opt.step()

    return 64 / median_seconds(step, repeats)


def _sr_only(model: ImagenCascade, prompts: list[str]):
    """The SR stage alone, on a fixed low-resolution input: what it adds to each base's sampling time."""
    import torch.nn.functional as F

    from trilemma.diffusion.denoiser import classifier_free_guidance
    from trilemma.diffusion.sampling import make_sampler, sample
    from trilemma.diffusion.thresholding import thresholded

    low = torch.rand(len(prompts), 3, model.config.resolutions[0], model.config.resolutions[0]) * 2 - 1
    level = torch.full((len(prompts),), 0.2)
    low_res = model.low_res_condition(1, low, level, torch.randn_like(low))
    aug_t = model.aug_timestep(level)
    size = model.config.resolutions[1]
    scheduler = make_sampler("dpmsolver++", model.noise_scheduler.config)
    denoiser = classifier_free_guidance(lambda x, t, st, m: model.denoise(1, x, t, st, m, low_res, aug_t),
                                        model.encode_text(1, prompts), model.encode_text(1, [""] * len(prompts)),
                                        model.config.guidance_scale)
    denoiser = thresholded(denoiser, scheduler.alphas_cumprod, model.config.prediction_type, "dynamic")
    return sample(denoiser, (3, size, size), list(range(len(prompts))), scheduler, model.config.sr_sampling_steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    recipe = build()
    sr = recipe.config.unet_channels[1]
    three, four = [64, 128, 128], [32, 64, 128, 128]
    bases = {f"base {r} px, {len(c)} levels {tuple(c)}": build(resolutions=[r, 64], unet_channels=[c, sr])
             for r in (16, 32) for c in (three, four)}
    full_sr = build(sr_crop=None)
    params = lambda m, s: sum(p.numel() for p in m.unets[s].parameters())  # noqa: E731
    rows = {name: {"train_img_per_s": train_cost(m, 0, args.repeats), "unet_parameters": params(m, 0)} for name, m in bases.items()}
    rows["SR 16->64, 32 px crops"] = {"train_img_per_s": train_cost(recipe, 1, args.repeats), "unet_parameters": params(recipe, 1)}
    rows["SR 16->64, whole 64 px"] = {"train_img_per_s": train_cost(full_sr, 1, args.repeats), "unet_parameters": params(full_sr, 1)}
    prompts = [PROMPT] * 16
    for name, m in bases.items():
        m.eval()
        rows[name]["sample_img_per_s"] = 16 / median_seconds(lambda m=m: m.generate(prompts, stages=1), 1)
    recipe.eval()
    rows["SR 16->64 stage alone"] = {"sample_img_per_s": 16 / median_seconds(lambda: _sr_only(recipe, prompts), 1)}
    ref = rows[next(iter(bases))]
    for row in rows.values():
        for key in ("train_img_per_s", "sample_img_per_s"):
            if key in row:
                row[key] = round(row[key], 2)
                if key in ref:
                    row[key.replace("img_per_s", "speed_vs_first_base")] = round(row[key] / ref[key], 3)
    report = {"recipe": str(RECIPE.name), "batch_train": 64, "batch_sample": 16, "threads": 2, "rows": rows}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
