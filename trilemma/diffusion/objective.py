"""The denoising objectives the diffusion models of the project train with.

Rectified flow (Liu et al., 2022; Lipman et al., 2022, "flow matching"), as Stable Diffusion 3 trains it (Esser et
al., 2024): the straight path x_t = (1 - t) x0 + t noise between data and noise, the network predicting the
velocity noise - x0, with t drawn from a logit-normal density that puts the training on the middle of the path
(the paper's best sampler of t, "rf/lognorm(0.00, 1.00)"). diffusers' flow schedulers sample it and use the same
conventions (model timestep 1000 t, output noise - x0), but diffusers has no training loss for it.

Or v-prediction (Salimans & Ho, 2022) or epsilon-prediction on a diffusers
noise schedule, with optional min-SNR-gamma weighting (Hang et al., 2023),
and optionally a learned variance (Nichol & Dhariwal, 2021, "Improved
DDPM"): the network outputs twice the channels, the second half v in
[-1, 1] interpolating the log variance between beta_t and the posterior's
beta~_t (diffusers' `variance_type="learned_range"`), trained by the
variational bound term with the mean's gradient stopped (the hybrid loss).
diffusers samples with learned variances but has no training loss for
them, so the bound is written here.
"""

from __future__ import annotations

import math

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

VARIANCE_TYPES = ("fixed_small", "learned_range")


def denoising_loss(scheduler: DDPMScheduler, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   x0: torch.Tensor, prediction_type: str, min_snr_gamma: float | None,
                   learned_variance: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss, plain per-sample MSE mean) for clean samples x0; `denoise(x_t, t)` is the network."""
    b = x0.shape[0]
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t) if prediction_type == "v_prediction" else noise
    out = denoise(noisy, t)
    if learned_variance:
        out, var_values = out.split(x0.shape[1], dim=1)
    per_sample = F.mse_loss(out, target, reduction="none").mean(dim=tuple(range(1, x0.dim())))
    mse = per_sample.mean().detach()
    if min_snr_gamma:
        # Min-SNR-gamma (Hang et al., 2023, eq. 9): clamp the weight of low-noise steps.
        alpha_bar = scheduler.alphas_cumprod.to(x0.device)[t]
        snr = alpha_bar / (1 - alpha_bar)
        weight = snr.clamp(max=min_snr_gamma)
        weight = weight / (snr + 1) if prediction_type == "v_prediction" else weight / snr
        per_sample = weight * per_sample
    loss = per_sample.mean()
    if learned_variance:
        # lambda = 0.001 on L_vlb = sum over T terms is weight lambda * T on the one sampled term
        # (weight 1 at T = 1000, as in the paper's code).
        x0_pred = predicted_x0(scheduler, out.detach(), noisy, t, prediction_type)  # stop-gradient on the mean
        loss = loss + 0.001 * scheduler.config.num_train_timesteps * vlb_term(scheduler, x0, noisy, t, x0_pred, var_values).mean()
    return loss, mse


def flow_matching_loss(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                       logit_mean: float = 0.0, logit_std: float = 1.0, shift: float = 1.0,
                       num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, plain MSE) of rectified flow for clean samples x0; `denoise(x_t, timestep)` is the network, given
    timestep = num_train_timesteps * t as diffusers' flow schedulers call it. t ~ logit-normal(logit_mean,
    logit_std) (SD3, section 3.1), then moved by the schedule's `shift` as the sampler's timesteps are
    (t' = shift t / (1 + (shift - 1) t)), so that training and sampling put their weight on the same noise levels."""
    b = x0.shape[0]
    t = torch.sigmoid(logit_mean + logit_std * torch.randn(b, device=x0.device))
    t = shift * t / (1 + (shift - 1) * t)
    noise = torch.randn_like(x0)
    tb = t.view(-1, *[1] * (x0.dim() - 1))
    x_t = (1 - tb) * x0 + tb * noise
    out = denoise(x_t, t * num_train_timesteps)
    loss = F.mse_loss(out, noise - x0)
    return loss, loss.detach()


def predicted_x0(scheduler: DDPMScheduler, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    alpha_bar = _at(scheduler.alphas_cumprod, t, x_t)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return a * x_t - s * out
    if prediction_type == "epsilon":
        return (x_t - s * out) / a
    return out


def vlb_term(scheduler: DDPMScheduler, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0_pred: torch.Tensor,
             var_values: torch.Tensor) -> torch.Tensor:
    """L_t of the variational bound per sample, in bits per dimension (Improved DDPM, eq. 4-5 and 15).

    KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0; at t = 0 the negative log-likelihood
    of x0 under a Gaussian discretized to 256 levels, as DDPM's decoder.
    """
    betas, alphas_cumprod = scheduler.betas.to(x0.device), scheduler.alphas_cumprod.to(x0.device)
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    beta, ab, ab_prev = _at(betas, t, x0), _at(alphas_cumprod, t, x0), _at(prev, t, x0)
    coef_x0, coef_xt = beta * ab_prev.sqrt() / (1 - ab), (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
    posterior_var = betas * (1 - prev) / (1 - alphas_cumprod)
    # log beta~_0 = log 0: clipped to beta~_1, as in the paper's code.
    log_posterior_var = torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]]))
    true_mean, true_logvar = coef_x0 * x0 + coef_xt * x_t, _at(log_posterior_var, t, x0)
    frac = (var_values + 1) / 2  # learned_range: v in [-1, 1] interpolates between the two log variances
    model_logvar = frac * beta.log() + (1 - frac) * true_logvar
    model_mean = coef_x0 * x0_pred + coef_xt * x_t
    kl = 0.5 * (-1.0 + model_logvar - true_logvar + (true_logvar - model_logvar).exp()
                + (true_mean - model_mean) ** 2 * (-model_logvar).exp())
    nll = -_discretized_gaussian_log_likelihood(x0, model_mean, model_logvar)
    dims = tuple(range(1, x0.dim()))
    per_t = torch.where((t == 0).view(-1, *[1] * (x0.dim() - 1)), nll, kl)
    return per_t.mean(dim=dims) / math.log(2.0)


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log P(x) for data in [-1, 1] on 256 levels, under N(mean, exp(logvar)) integrated over each level's bin."""
    inv_std = torch.exp(-0.5 * logvar)
    normal = torch.distributions.Normal(0.0, 1.0)
    cdf_plus = normal.cdf(inv_std * (x - mean + 1.0 / 255))
    cdf_min = normal.cdf(inv_std * (x - mean - 1.0 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype)[t].view(-1, *[1] * (like.dim() - 1))
