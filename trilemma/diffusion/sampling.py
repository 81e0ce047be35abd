"""The sampling loop, kept apart from the models: any denoiser, any diffusers scheduler.

In the manner of k-diffusion (Crowson; Karras et al., 2022), a sampler is a small function of a denoiser,
`denoiser(x_t, t) -> model output` (`trilemma.diffusion.denoiser`). What steers the model wraps the denoiser before
the loop sees it, in this order:

- classifier-free guidance (Ho & Salimans, 2022), with an optional negative prompt: `classifier_free_guidance`;
- gradient guidance, CLIP (GLIDE) or a classifier (Dhariwal & Nichol, 2021): `guidance.gradient_guidance`;
- Imagen's thresholding (Saharia et al., 2022): `thresholding.thresholded`.

The samplers are diffusers' schedulers: DDPM (ancestral), DDIM (eta configurable) and DPM-Solver++ (2M) for models
trained on a noise schedule (epsilon, v); Euler, Heun (second order, two evaluations a step) and DPM-Solver++ on flow
sigmas for rectified-flow models (`objective.flow_matching_loss`), whose timestep t stands for noise level t / 1000
on the straight path (1 - t) x0 + t noise. This loop
owns what is the same for all of them: seeded starting noise and step noise, one generator per image; Improved
DDPM's learned variance (Nichol & Dhariwal, 2021) handed to DDPM; progress reports.

Two edits ride on the same loop, for any model that samples through it, as pieces that plug in:
- SDEdit (Meng et al., 2022), image-to-image, a start point (`sdedit`): `init` noised to the timestep that
  `strength` picks, then denoised under the prompt (diffusers' img2img takes the same timesteps: the last
  strength x steps).
- RePaint (Lugmayr et al., 2022), training-free inpainting, a step wrapper (`repaint`): after every step the region
  to keep is replaced by the known image noised to the new timestep, so the model only draws the hole; with
  `resample` r > 1 each step is taken r times, the result pushed back one step by the forward process in between,
  which lets the hole and the kept region agree (the paper's resampling, jump length 1).
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                       FlowMatchHeunDiscreteScheduler)

from trilemma.diffusion.denoiser import Denoiser, split_learned_variance
from trilemma.diffusion.options import FLOW_SAMPLERS, NOISE_SAMPLERS
from trilemma.model import seeded_noise
from trilemma.progress import progress as progress_bar
from trilemma.progress import report_step

Scheduler = (DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler | FlowMatchEulerDiscreteScheduler
             | FlowMatchHeunDiscreteScheduler)
# A start point: (scheduler with its timesteps set, x_T) -> (the timesteps to take, the sample to start from).
Start = Callable[[Scheduler, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# One sampler step: (x at timesteps[i], i) -> x at the noise level the step lands on.
Step = Callable[[torch.Tensor, int], torch.Tensor]
# A step wrapper: (step, scheduler, timesteps, seeds) -> a new step.
StepWrapper = Callable[[Step, Scheduler, torch.Tensor, list[int]], Step]

# Seed offsets of the noise drawn after the starting noise, per image: the scheduler's step noise (DDPM, DDIM with
# eta > 0) and RePaint's forward-process noise. Fixed, so that an image depends on its seed alone.
STEP_NOISE_SEED = 1_000_003
REPAINT_NOISE_SEED = 2_000_003

DIFFUSION_SAMPLERS, FLOW_SAMPLERS = NOISE_SAMPLERS, FLOW_SAMPLERS
SAMPLERS = DIFFUSION_SAMPLERS + ("euler", "heun")


def is_flow(scheduler_or_config) -> bool:
    """Whether a scheduler (or a training scheduler's config) is rectified flow's."""
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    return "shift" in config or bool(config.get("use_flow_sigmas"))


def make_sampler(name: str, train_scheduler_config) -> Scheduler:
    """A sampling scheduler on the training schedule: a noise schedule (DDPMScheduler's config) or rectified flow's
    (FlowMatchEulerDiscreteScheduler's)."""
    if is_flow(train_scheduler_config):
        return _flow_sampler(name, train_scheduler_config)
    if name not in DIFFUSION_SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} for a model trained on a noise schedule; choose one of "
                         f"{', '.join(DIFFUSION_SAMPLERS)}")
    # "trailing" spacing starts sampling at the last training step (Lin et al., 2023).
    common = {"timestep_spacing": "trailing"}
    # Thresholding wraps the denoiser (`thresholding.thresholded`: any sampler, any prediction type): the schedulers'
    # own is off.
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
    # Learned variances only change DDPM's ancestral noise; `denoising_step` hands DPM-Solver the mean part alone.
    return DPMSolverMultistepScheduler.from_config(train_scheduler_config, algorithm_type="dpmsolver++", solver_order=2,
                                                   variance_type=None, **common)


def _flow_sampler(name: str, config) -> Scheduler:
    if name not in FLOW_SAMPLERS:
        raise ValueError(f"sampler {name!r} is for models trained on a noise schedule; a rectified-flow model samples "
                         f"with {', '.join(FLOW_SAMPLERS)}")
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    if name == "heun":
        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=config["num_train_timesteps"], shift=config["shift"])
    # DPM-Solver++(2M) on the flow's sigmas (as diffusers' Sana and Wan pipelines): second order at one network call a
    # step, where Heun takes two.
    return DPMSolverMultistepScheduler(num_train_timesteps=config["num_train_timesteps"], use_flow_sigmas=True,
                                       prediction_type="flow_prediction", flow_shift=config["shift"],
                                       algorithm_type="dpmsolver++", solver_order=2)


def noised(scheduler: Scheduler, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """q(x_t | x0): x0 carried to timestep t of the scheduler's process, with `noise`."""
    if is_flow(scheduler):
        sigma = float(t) / scheduler.config.num_train_timesteps
        return (1 - sigma) * x0 + sigma * noise
    ab = scheduler.alphas_cumprod.to(noise.device, torch.float32)[t]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


@torch.no_grad()
def sample(denoiser: Denoiser, shape: tuple[int, ...], seeds: list[int], scheduler: Scheduler, steps: int,
           eta: float = 0.0, start: Start | None = None, wrap_step: StepWrapper | None = None, progress: bool = False,
           device=None) -> torch.Tensor:
    """x_0 for each seed, a sample of `shape` per image, by `steps` steps of `scheduler` (`make_sampler`).
    `eta`: DDIM's noise (0: deterministic). `start`: where to start instead of pure noise (`sdedit`). `wrap_step`: a
    change of every step (`repaint`)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    x = seeded_noise(shape, seeds, device) * getattr(scheduler, "init_noise_sigma", 1.0)
    if start is not None:
        timesteps, x = start(scheduler, x)
    step = denoising_step(denoiser, scheduler, timesteps, seeds, eta, device)
    if wrap_step is not None:
        step = wrap_step(step, scheduler, timesteps, seeds)
    for i, t in enumerate(progress_bar(timesteps, enabled=progress, leave=False, desc="denoising")):
        x = step(x, i)
        report_step("denoising", i + 1, len(timesteps), x)
    return x


def denoising_step(denoiser: Denoiser, scheduler: Scheduler, timesteps: torch.Tensor, seeds: list[int], eta: float = 0.0,
                   device=None) -> Step:
    """One scheduler step from x at timesteps[i]: the denoiser's output handed to `scheduler.step`."""
    # Ancestral (DDPM) steps, and DDIM with eta > 0, draw noise too: per-image generators again.
    step_kwargs = {"generator": [torch.Generator(device).manual_seed(s + STEP_NOISE_SEED) for s in seeds]}
    if isinstance(scheduler, DDIMScheduler):
        step_kwargs["eta"] = eta
    # Learned variances only change DDPM's ancestral noise; the other samplers get the mean part alone.
    learned_range = isinstance(scheduler, DDPMScheduler) and getattr(scheduler.config, "variance_type", None) == "learned_range"
    last = timesteps[-1]

    def step(x: torch.Tensor, i: int) -> torch.Tensor:
        t = timesteps[i]
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out, var_values = split_learned_variance(denoiser(model_input, t), x.shape[1])
        if var_values is not None and learned_range:
            if t == last:
                # The last step goes to x0 and adds no noise (Improved DDPM). Trailing spacing ends above t = 0,
                # where diffusers would add noise from a variance the network never learned for that jump:
                # v = -1 selects the posterior variance, which is 0 (1e-20) on the final step.
                var_values = torch.full_like(var_values, -1.0)
            return scheduler.step(torch.cat([out, var_values], dim=1), t, x, **step_kwargs).prev_sample.to(out.dtype)
        return scheduler.step(out, t, x, **step_kwargs).prev_sample.to(out.dtype)
    return step


def sdedit(init: torch.Tensor, strength: float) -> Start:
    """SDEdit's start point: `init` (B, *shape) noised by q(x_t | x_0) to the first of the last strength x steps
    timesteps, strength in (0, 1] (1: from pure noise, as text-to-image)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")

    def start(scheduler: Scheduler, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = scheduler.num_inference_steps
        first = steps - min(int(steps * strength), steps)
        if first >= steps:
            raise ValueError(f"strength {strength} x {steps} steps leaves no denoising step; raise the strength or the steps")
        timesteps = scheduler.timesteps[first * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(first * scheduler.order)
        # The seeded noise is the same draw as text-to-image's.
        return timesteps, noised(scheduler, init.to(noise.device, noise.dtype), noise, timesteps[0])
    return start


def repaint(known: torch.Tensor, keep: torch.Tensor, resample: int = 1) -> StepWrapper:
    """RePaint's step wrapper: `known` (B, *shape) stays where `keep` is 1 (a mask broadcast over it), the model draws
    the rest; each step taken `resample` times (r > 1 needs a one-step sampler, ddpm or ddim)."""
    if resample < 1:
        raise ValueError(f"resample must be at least 1, not {resample}")

    def wrap(step: Step, scheduler: Scheduler, timesteps: torch.Tensor, seeds: list[int]) -> Step:
        if is_flow(scheduler):
            raise ValueError("RePaint inpainting is written for noise schedules; this model is trained with rectified "
                             "flow: use an inpainting model (shapes-ldm-f8-inpaint) or img2img")
        if resample > 1 and isinstance(scheduler, DPMSolverMultistepScheduler):
            raise ValueError("resample above 1 needs a one-step sampler (ddpm or ddim): "
                             "DPM-Solver++ keeps a history of past steps that going back would corrupt")
        noise = [torch.Generator().manual_seed(s + REPAINT_NOISE_SEED) for s in seeds]

        def repainted(x: torch.Tensor, i: int) -> torch.Tensor:
            alphas_cumprod = scheduler.alphas_cumprod.to(x.device, torch.float32)
            ab_prev = landing_alpha_bar(scheduler, alphas_cumprod, timesteps, i)
            for r in range(resample):
                if r > 0:  # RePaint's resampling: x_{t-1} back to x_t through q(x_t | x_{t-1})
                    ab_t = alphas_cumprod[timesteps[i]]
                    x = (ab_t / ab_prev).sqrt() * x + (1 - ab_t / ab_prev).sqrt() * _draw(noise, x)
                x = step(x, i)
                noised = ab_prev.sqrt() * known.to(x.device, x.dtype) + (1 - ab_prev).sqrt() * _draw(noise, x)
                x = keep * noised + (1 - keep) * x
            return x
        return repainted
    return wrap


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
