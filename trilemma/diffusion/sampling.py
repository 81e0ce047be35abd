"""The sampling loop, kept apart from the models: any denoiser, any diffusers scheduler.

A model supplies `denoise(x_t, t, states, mask)` (its U-Net's output:
epsilon, v or x0) and the text states; this loop owns the rest: seeded
starting noise, classifier-free guidance (Ho & Salimans, 2022) with an
optional negative prompt, gradient guidance (CLIP or a classifier), Imagen's
thresholding, and the scheduler's steps.
Samplers are diffusers' schedulers: DDPM (ancestral), DDIM (eta
configurable) and DPM-Solver++ (2M).

Two edits ride on the same loop, for any model that samples through it:
- SDEdit (Meng et al., 2022), image-to-image: `init` noised to the timestep that `strength` picks, then
  denoised under the prompt (diffusers' img2img takes the same timesteps: the last strength x steps).
- RePaint (Lugmayr et al., 2022), training-free inpainting: after every step the region to keep is replaced
  by the known image noised to the new timestep, so the model only draws the hole; with `resample` r > 1
  each step is taken r times, the result pushed back one step by the forward process in between, which lets
  the hole and the kept region agree (the paper's resampling, jump length 1).
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from trilemma.diffusion.guidance import guided_output
from trilemma.diffusion.thresholding import MODES as THRESHOLDING_MODES
from trilemma.diffusion.thresholding import IF_MAX_VALUE, IF_PERCENTILE, check_threshold_options, thresholded_output
from trilemma.progress import progress as progress_bar
from trilemma.progress import report_step

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
           eta: float = 0.0, progress: bool = False, device=None, guide=None, init: torch.Tensor | None = None,
           strength: float = 1.0, known: tuple[torch.Tensor, torch.Tensor] | None = None, resample: int = 1) -> torch.Tensor:
    """x_0 for each seed. `cond`/`uncond` are (states, mask) of the prompts and of the negative prompt; `guide`, a
    gradient guide (CLIP or classifier guidance, `trilemma.diffusion.guidance`), applied after classifier-free guidance.
    `init` (B, *shape) and `strength` in (0, 1]: SDEdit from that image. `known` = (x0, keep) with keep 1 where x0
    stays: RePaint, `resample` times per step (r > 1 needs a one-step sampler, ddpm or ddim)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if thresholding not in THRESHOLDING_MODES:
        raise ValueError(f"unknown thresholding {thresholding!r}; choose one of {', '.join(THRESHOLDING_MODES)}")
    if thresholding == "dynamic":
        check_threshold_options(percentile, max_value)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    x = seeded_noise(shape, seeds, device) * scheduler.init_noise_sigma
    alphas_cumprod = scheduler.alphas_cumprod.to(x.device, torch.float32)
    if init is not None:
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        first = steps - min(int(steps * strength), steps)
        if first >= steps:
            raise ValueError(f"strength {strength} x {steps} steps leaves no denoising step; raise the strength or the steps")
        timesteps = timesteps[first * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(first * scheduler.order)
        # q(x_t | x_0) at the first kept timestep; the seeded noise is the same draw as text-to-image's.
        ab = alphas_cumprod[timesteps[0]]
        x = ab.sqrt() * init.to(x.device, x.dtype) + (1 - ab).sqrt() * x
    if resample < 1 or (resample > 1 and isinstance(scheduler, DPMSolverMultistepScheduler)):
        raise ValueError("resample must be at least 1, and above 1 only with a one-step sampler (ddpm or ddim): "
                         "DPM-Solver++ keeps a history of past steps that going back would corrupt")
    keep_noise = [torch.Generator().manual_seed(s + 2_000_003) for s in seeds] if known is not None else None
    use_cfg = guidance_scale != 1.0 and uncond is not None
    states, mask = (torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]])) if use_cfg else cond
    # Ancestral (DDPM) steps, and DDIM with eta > 0, draw noise too: per-image generators again.
    step_kwargs = {"generator": [torch.Generator(device).manual_seed(s + 1_000_003) for s in seeds]}
    if isinstance(scheduler, DDIMScheduler):
        step_kwargs["eta"] = eta
    last = timesteps[-1]
    for i, t in enumerate(progress_bar(timesteps, enabled=progress, leave=False, desc="denoising")):
        for r in range(resample if known is not None else 1):
            if r > 0:  # RePaint's resampling: x_{t-1} back to x_t through q(x_t | x_{t-1})
                ab_t, ab_prev = alphas_cumprod[t], landing_alpha_bar(scheduler, alphas_cumprod, timesteps, i)
                x = (ab_t / ab_prev).sqrt() * x + (1 - ab_t / ab_prev).sqrt() * _draw(keep_noise, x)
            x = _step(denoise, scheduler, x, t, last, states, mask, use_cfg, guidance_scale, guide, alphas_cumprod,
                      prediction_type, thresholding, percentile, max_value, step_kwargs)
            if known is not None:
                x0, keep = known
                ab = landing_alpha_bar(scheduler, alphas_cumprod, timesteps, i)
                noised = ab.sqrt() * x0.to(x.device, x.dtype) + (1 - ab).sqrt() * _draw(keep_noise, x)
                x = keep * noised + (1 - keep) * x
        report_step("denoising", i + 1, len(timesteps), x)
    return x


def landing_alpha_bar(scheduler, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, i: int) -> torch.Tensor:
    """alpha_bar of the noise level that step i of the scheduler lands on. DPM-Solver lands on the next timestep of
    its list (the clean image after the last), and so does DDPM; DDIM steps by T // steps, which with trailing
    spacing is not always the next listed timestep (966 -> 933 at 30 steps, where the list says 932), and its step
    past 0 lands on its final alpha_bar."""
    if isinstance(scheduler, DDIMScheduler):
        prev = int(timesteps[i]) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        return alphas_cumprod[prev] if prev >= 0 else alphas_cumprod.new_tensor(float(scheduler.final_alpha_cumprod))
    return alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else alphas_cumprod.new_tensor(1.0)


def _draw(generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators]).to(like.device, like.dtype)


def _step(denoise, scheduler, x, t, last, states, mask, use_cfg, guidance_scale, guide, alphas_cumprod, prediction_type,
          thresholding, percentile, max_value, step_kwargs) -> torch.Tensor:
    """One sampler step from x_t: the model's output, guided, thresholded, handed to the scheduler."""
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
        return scheduler.step(torch.cat([out, var_values], dim=1), t, x, **step_kwargs).prev_sample.to(out.dtype)
    return scheduler.step(out, t, x, **step_kwargs).prev_sample.to(out.dtype)
