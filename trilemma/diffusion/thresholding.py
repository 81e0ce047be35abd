"""Thresholding of the predicted clean image while sampling (Saharia et al., 2022, "Imagen", sec. 2.3).

Large classifier-free guidance weights push the predicted x0 outside the
data's range [-1, 1]; each step then feeds the overshoot back in, and samples
saturate. Static thresholding clips x0 to [-1, 1]. Dynamic thresholding sets
s to the p-th percentile of |x0| per sample and, when s > 1, clips to [-s, s]
and divides by s, pulling saturated pixels inwards.

Imagen's pseudocode leaves s uncapped. DeepFloyd IF, the public reproduction
of Imagen, caps it: s = clamp(quantile(|x0|, p), 1, max_value) with p = 0.95
and max_value 1.5 in its 64 px stage I, 1.0 in its SR stages (where the cap
makes dynamic thresholding equal to static clipping); diffusers calls the cap
`sample_max_value`. Uncapped, s can run away (measured on Shapes at guidance 10: past 8 in the
later steps), dividing every pixel, background included, by s.

diffusers' schedulers carry the same operation (`thresholding=True`) but
only some of them (DDPM, DDIM, DPM-Solver), each inside its own `step`, and
only for some prediction types. Written here once as a wrapper of the
denoiser (`thresholded`, see `trilemma.diffusion.denoiser`), between the
model and any scheduler: the model output is turned into x0, thresholded,
and turned back into the scheduler's prediction type. It wraps last, after
classifier-free and gradient guidance, whose overshoot it is there to catch.
A test checks it against diffusers' `_threshold_sample`.
"""

from __future__ import annotations

import torch

from trilemma.diffusion.denoiser import Denoiser, alpha_bar_at, on_mean

MODES = ("none", "static", "dynamic")
# DeepFloyd IF's stage-I settings (its scheduler config: dynamic_thresholding_ratio, sample_max_value).
IF_PERCENTILE = 0.95
IF_MAX_VALUE = 1.5
UNCAPPED = float("inf")  # Imagen's pseudocode


def check_threshold_options(percentile: float, max_value: float) -> None:
    if not 0.0 < percentile <= 1.0:  # also refuses NaN
        raise ValueError(f"the dynamic thresholding percentile must lie in (0, 1], not {percentile}")
    if not max_value >= 1.0:
        raise ValueError(f"the dynamic thresholding cap (max value of s) must be at least 1 (inf: uncapped), not {max_value}")


def thresholded(denoiser: Denoiser, alphas_cumprod: torch.Tensor, prediction_type: str, mode: str,
                percentile: float = IF_PERCENTILE, max_value: float = IF_MAX_VALUE) -> Denoiser:
    """The denoiser with the clean image its output implies thresholded at every step (`thresholded_output`);
    mode "none" gives it back unchanged. `alphas_cumprod`: the sampling schedule's alpha_bar per training timestep."""
    if mode not in MODES:
        raise ValueError(f"unknown thresholding {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "none":
        return denoiser
    if mode == "dynamic":
        check_threshold_options(percentile, max_value)

    def clip(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return thresholded_output(out, x_t, alpha_bar_at(alphas_cumprod, t, x_t), prediction_type, mode, percentile,
                                  max_value)
    return on_mean(denoiser, clip)


def threshold(x0: torch.Tensor, mode: str = "dynamic", percentile: float = IF_PERCENTILE,
              max_value: float = IF_MAX_VALUE) -> torch.Tensor:
    if mode not in MODES:
        raise ValueError(f"unknown thresholding {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "none":
        return x0
    if mode == "static":
        return x0.clamp(-1.0, 1.0)
    check_threshold_options(percentile, max_value)
    flat = x0.float().reshape(x0.shape[0], -1)
    # s >= 1: below that the sample is already inside [-1, 1] and is left alone.
    s = torch.quantile(flat.abs(), percentile, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (flat.clamp(-s, s) / s).reshape(x0.shape).to(x0.dtype)


def thresholded_output(output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str,
                       mode: str, percentile: float = IF_PERCENTILE, max_value: float = IF_MAX_VALUE) -> torch.Tensor:
    """The model output re-expressed so that the x0 it implies is thresholded.

    With x_t = a x0 + s eps (a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar)):
    epsilon-prediction gives x0 = (x_t - s eps) / a, v-prediction gives
    x0 = a x_t - s v; the thresholded x0 is mapped back the same way.
    """
    if mode == "none":
        return output
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        x0 = (sample - s * output) / a
        return (sample - a * threshold(x0, mode, percentile, max_value)) / s
    if prediction_type == "v_prediction":
        x0 = a * sample - s * output
        return (a * sample - threshold(x0, mode, percentile, max_value)) / s
    if prediction_type == "sample":
        return threshold(output, mode, percentile, max_value)
    raise ValueError(f"unknown prediction type {prediction_type!r}")
