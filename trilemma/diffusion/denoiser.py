"""What a sampler calls: a denoiser, `denoiser(x_t, t) -> model output`, and classifier-free guidance, which builds one.

As in k-diffusion (Crowson; Karras et al., 2022), a sampler sees one function of the noisy sample and the timestep;
whatever steers the model is a wrapper that returns a new denoiser of the same form, so the pieces compose and the
loop stays the same:

    denoiser = classifier_free_guidance(network, cond, uncond, scale)        # this module
    denoiser = gradient_guidance(denoiser, guide, alphas_cumprod, "epsilon")  # trilemma.diffusion.guidance
    denoiser = thresholded(denoiser, alphas_cumprod, "epsilon", "dynamic")    # trilemma.diffusion.thresholding
    x0 = sample(denoiser, shape, seeds, scheduler, steps)                    # trilemma.diffusion.sampling

The output is what the network predicts (epsilon, v or x0: the scheduler's prediction type). A network that learns
its variance (Improved DDPM, Nichol & Dhariwal, 2021) returns twice the channels, the second half its variance
interpolation v; the wrappers steer the first half (the mean) and carry the second along, and the sampling step
decides whether the scheduler uses it.
"""

from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The model side: its network with the text (or other) condition as arguments, (x_t, t, states, mask) -> output.
Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# A change of the mean output that may read x_t and t: (output, x_t, t) -> output.
MeanMap = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_free_guidance(network: Network, cond: tuple[torch.Tensor, torch.Tensor],
                             uncond: tuple[torch.Tensor, torch.Tensor] | None, scale: float) -> Denoiser:
    """Ho & Salimans (2022): out_uncond + scale * (out_cond - out_uncond), both branches in one batch of twice the
    images. `cond`/`uncond` are (states, mask) of the prompts and of the negative prompt (or the empty one). With no
    `uncond` or a scale of 1 the network sees the prompts alone."""
    if uncond is None or scale == 1.0:
        states, mask = cond

        def conditional(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return network(x_t, t, states, mask)
        return conditional
    states, mask = torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]])

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out, var_values = split_learned_variance(network(torch.cat([x_t, x_t]), t, states, mask), x_t.shape[1])
        out_uncond, out_cond = out.chunk(2)
        out = out_uncond + scale * (out_cond - out_uncond)
        # Guidance moves the mean; the variance is the conditional branch's, as in GLIDE.
        return joined(out, var_values.chunk(2)[1] if var_values is not None else None)
    return guided


def on_mean(denoiser: Denoiser, change: MeanMap) -> Denoiser:
    """The denoiser with `change` applied to its mean output; a learned variance passes through untouched."""
    def changed(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out, var_values = split_learned_variance(denoiser(x_t, t), x_t.shape[1])
        return joined(change(out, x_t, t), var_values)
    return changed


def split_learned_variance(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean output, variance values or None): a learned variance rides in a second half of the channels."""
    if out.shape[1] == 2 * channels:
        mean, var_values = out.split(channels, dim=1)
        return mean, var_values
    return out, None


def joined(out: torch.Tensor, var_values: torch.Tensor | None) -> torch.Tensor:
    return out if var_values is None else torch.cat([out, var_values], dim=1)


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t in float32 on `like`'s device, shaped to broadcast over a batch like `like`."""
    return alphas_cumprod.to(like.device, torch.float32)[t].view(1, *[1] * (like.dim() - 1))
