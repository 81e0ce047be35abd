"""The denoising objective every diffusion model of the project trains with.

v-prediction (Salimans & Ho, 2022) or epsilon-prediction on a diffusers
noise schedule, with optional min-SNR-gamma weighting (Hang et al., 2023).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def denoising_loss(scheduler: DDPMScheduler, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   x0: torch.Tensor, prediction_type: str, min_snr_gamma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss, plain per-sample MSE mean) for clean samples x0; `denoise(x_t, t)` is the network."""
    b = x0.shape[0]
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t) if prediction_type == "v_prediction" else noise
    per_sample = F.mse_loss(denoise(noisy, t), target, reduction="none").mean(dim=tuple(range(1, x0.dim())))
    if not min_snr_gamma:
        return per_sample.mean(), per_sample.mean().detach()
    # Min-SNR-gamma (Hang et al., 2023, eq. 9): clamp the weight of low-noise steps.
    alpha_bar = scheduler.alphas_cumprod.to(x0.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = snr.clamp(max=min_snr_gamma)
    weight = weight / (snr + 1) if prediction_type == "v_prediction" else weight / snr
    return (weight * per_sample).mean(), per_sample.mean().detach()
