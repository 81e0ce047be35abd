"""Gradient guidance of a diffusion sampler: CLIP guidance (GLIDE, Nichol et al., 2021) and classifier
guidance (Dhariwal & Nichol, 2021) are one mechanism.

A guide is a function `grad(x_t, t, alpha_bar_t, x0_hat) -> g` giving the gradient of a log-score (a CLIP similarity,
a classifier's log-probability) with respect to x_t, times the guidance scale. `gradient_guidance` wraps a denoiser
(`trilemma.diffusion.denoiser`) so that the model's noise prediction is shifted by it,

    eps' = eps - sqrt(1 - alpha_bar_t) * g,

which is Dhariwal & Nichol's score-based conditioning (their eq. 14): it works with every sampler and
prediction type, and with classifier-free guidance applied first (GLIDE compares the two; here they
compose: wrap the classifier-free guided denoiser).

Two guides:
- `noise_aware_clip_guide`: GLIDE's, a CLIP image tower trained on noisy images (`trilemma.clip.noise_aware`)
  reads x_t and t directly; for pixel models at that tower's resolution.
- `decoded_clip_guide`: for latent models, an ordinary CLIP reads the decoded prediction of the clean
  image, decode(x0_hat); its gradient reaches z_t through x0_hat = (z_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)
  with eps held fixed (the U-Net's Jacobian is left out, as diffusers' CLIP-guided Stable Diffusion
  community pipeline also does to save a backward pass through the U-Net).
"""

from __future__ import annotations

from typing import Callable

import torch

from trilemma.diffusion.denoiser import Denoiser, alpha_bar_at, on_mean

MIN_ALPHA_BAR = 1e-3  # decoded_clip_guide steers only where x0_hat says something (alpha_bar_t at least this)

Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def noise_aware_clip_guide(classifier, prompts: list[str], scale: float) -> Guide:
    """GLIDE's CLIP guidance: the gradient of f(x_t, t) . g(c) with respect to x_t."""
    text = classifier.embed_text(prompts).detach()

    def grad(x_t: torch.Tensor, t, alpha_bar: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            sim = (classifier.embed_noisy_images(x, t) * text.to(x.device)).sum()
            (g,) = torch.autograd.grad(sim, x)
        return scale * g

    return grad


def decoded_clip_guide(clip, decode: Callable[[torch.Tensor], torch.Tensor], prompts: list[str], scale: float) -> Guide:
    """CLIP guidance through a decoder: the gradient of CLIP(decode(x0_hat)) . CLIP(prompt) with respect to x_t,
    with d x0_hat / d x_t = 1 / sqrt(alpha_bar_t) (the noise prediction held fixed)."""
    text = clip.embed_text(prompts).detach()

    def grad(x_t: torch.Tensor, t, alpha_bar: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        if float(alpha_bar.max()) < MIN_ALPHA_BAR:
            # Near pure noise x0_hat is the model's mean guess, and 1 / sqrt(alpha_bar) explodes (a zero-terminal-SNR
            # schedule reaches alpha_bar ~ 1e-9 at its first step): no guidance there.
            return torch.zeros_like(x_t)
        with torch.enable_grad():
            x0 = x0_hat.detach().requires_grad_(True)
            # No clamp on the decoded image: clamping kills the gradient wherever a pixel overshoots.
            sim = (clip.embed_images(decode(x0)) * text.to(x0.device)).sum()
            (g,) = torch.autograd.grad(sim, x0)
        return scale * g / alpha_bar.sqrt()

    return grad


def gradient_guidance(denoiser: Denoiser, guide: Guide, alphas_cumprod: torch.Tensor, prediction_type: str) -> Denoiser:
    """The denoiser steered by a gradient guide: its output's implied noise shifted by the guide's gradient at every
    step (`guided_output`). `alphas_cumprod`: the sampling schedule's alpha_bar for each training timestep."""
    def shift(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_output(out, x_t, alpha_bar_at(alphas_cumprod, t, x_t), t, prediction_type, guide)
    return on_mean(denoiser, shift)


def guided_output(out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, t, prediction_type: str, guide: Guide) -> torch.Tensor:
    """The model output (epsilon, v or x0) with its implied noise shifted by the guide's gradient."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        eps = out
    elif prediction_type == "v_prediction":
        eps = s * x_t + a * out
    elif prediction_type == "sample":
        eps = (x_t - a * out) / s
    else:
        raise ValueError(f"guidance does not know the prediction type {prediction_type!r}")
    x0_hat = (x_t - s * eps) / a
    g = guide(x_t, t, alpha_bar, x0_hat)
    eps = eps - s * g
    if prediction_type == "epsilon":
        return eps
    x0 = (x_t - s * eps) / a
    return a * eps - s * x0 if prediction_type == "v_prediction" else x0
