"""The sampling loop, kept apart from the models: any denoiser, any diffusers scheduler.

A model supplies `denoise(x_t, t, states, mask)` (its U-Net's output:
epsilon, v or x0) and the text states; this loop owns the rest: seeded
starting noise, classifier-free guidance (Ho & Salimans, 2022) with an
optional negative prompt, gradient guidance (CLIP or a classifier), Imagen's
thresholding, and the scheduler's steps.
Samplers are diffusers' schedulers: DDPM (ancestral), DDIM (eta
configurable) and DPM-Solver++ (2M).
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from trilemma.diffusion.guidance import guided_output
from trilemma.diffusion.thresholding import MODES as THRESHOLDING_MODES
from trilemma.diffusion.thresholding import IF_MAX_VALUE, IF_PERCENTILE, check_threshold_options, thresholded_output
from trilemma.progress import progress as progress_bar

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")


def make_sampler(name: str, train_scheduler_config) -> DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler:
    """A sampling scheduler on the training schedule."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    # "trailing" spacing starts sampling at the last training step (Lin et al., 2023).
    common = {"timestep_spacing": "trailing"}
    # Thresholding is this module's job (any sampler, any prediction type): the schedulers' own is off.
    plain = {"clip_sample": False, "thresholding": False}
    if name == "ddpm":
        return DDPMScheduler.from_config(train_scheduler_config, **common, **plain)
    if name == "ddim":
        ddim = DDIMScheduler.from_config(train_scheduler_config, **common, **plain)
        # DDIM with eta > 0 takes sqrt(1 - alpha_bar_prev - sigma^2), which is >= 0 in exact
        # arithmetic but rounds below zero in float32 at the first trailing step (NaN samples):
        # float64 schedule constants keep it real.
        ddim.alphas_cumprod = ddim.alphas_cumprod.double()
        ddim.final_alpha_cumprod = torch.as_tensor(ddim.final_alpha_cumprod, dtype=torch.float64)
        return ddim
    # Learned variances only change DDPM's ancestral noise; the loop hands DPM-Solver the mean part alone.
    return DPMSolverMultistepScheduler.from_config(train_scheduler_config, algorithm_type="dpmsolver++", solver_order=2,
                                                   variance_type=None, **common)


def seeded_noise(shape: tuple[int, ...], seeds: list[int], device) -> torch.Tensor:
    # One generator per image: an image depends on its seed, not on its batch.
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


@torch.no_grad()
def sample(denoise: Callable, shape: tuple[int, ...], seeds: list[int], scheduler, steps: int,
           cond: tuple[torch.Tensor, torch.Tensor], uncond: tuple[torch.Tensor, torch.Tensor] | None,
           guidance_scale: float, prediction_type: str, thresholding: str = "none", percentile: float = IF_PERCENTILE,
           max_value: float = IF_MAX_VALUE,
           eta: float = 0.0, progress: bool = False, device=None, guide=None) -> torch.Tensor:
    """x_0 for each seed. `cond`/`uncond` are (states, mask) of the prompts and of the negative prompt; `guide`, a
    gradient guide (CLIP or classifier guidance, `trilemma.diffusion.guidance`), applied after classifier-free guidance."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if thresholding not in THRESHOLDING_MODES:
        raise ValueError(f"unknown thresholding {thresholding!r}; choose one of {', '.join(THRESHOLDING_MODES)}")
    if thresholding == "dynamic":
        check_threshold_options(percentile, max_value)
    scheduler.set_timesteps(steps)
    x = seeded_noise(shape, seeds, device) * scheduler.init_noise_sigma
    use_cfg = guidance_scale != 1.0 and uncond is not None
    states, mask = (torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]])) if use_cfg else cond
    # Ancestral (DDPM) steps, and DDIM with eta > 0, draw noise too: per-image generators again.
    step_kwargs = {"generator": [torch.Generator(device).manual_seed(s + 1_000_003) for s in seeds]}
    if isinstance(scheduler, DDIMScheduler):
        step_kwargs["eta"] = eta
    alphas_cumprod = scheduler.alphas_cumprod.to(x.device, torch.float32)
    last = scheduler.timesteps[-1]
    for t in progress_bar(scheduler.timesteps, enabled=progress, leave=False, desc="denoising"):
        inp = torch.cat([x, x]) if use_cfg else x
        out = denoise(scheduler.scale_model_input(inp, t), t, states, mask)
        var_values = None
        if out.shape[1] == 2 * x.shape[1]:  # a learned variance (Improved DDPM) rides in the second half
            out, var_values = out.split(x.shape[1], dim=1)
        if use_cfg:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
            # Guidance moves the mean; the variance is the conditional branch's, as in GLIDE.
            var_values = var_values.chunk(2)[1] if var_values is not None else None
        if guide is not None:
            out = guided_output(out, x, alphas_cumprod[t].view(1, *[1] * (x.dim() - 1)), t, prediction_type, guide)
        if thresholding != "none":
            out = thresholded_output(out, x, alphas_cumprod[t].view(1, *[1] * (x.dim() - 1)), prediction_type,
                                     thresholding, percentile, max_value)
        if var_values is not None and getattr(scheduler.config, "variance_type", None) == "learned_range" \
                and isinstance(scheduler, DDPMScheduler):
            if t == last:
                # The last step goes to x0 and adds no noise (Improved DDPM). Trailing spacing ends above t = 0,
                # where diffusers would add noise from a variance the network never learned for that jump:
                # v = -1 selects the posterior variance, which is 0 (1e-20) on the final step.
                var_values = torch.full_like(var_values, -1.0)
            x = scheduler.step(torch.cat([out, var_values], dim=1), t, x, **step_kwargs).prev_sample.to(out.dtype)
            continue
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample.to(out.dtype)
    return x
