"""The sampling loop and the wrappers that compose into its denoiser (`trilemma.diffusion.sampling`).

The reference tensors in fixtures/sampler_reference.safetensors were written by the loop that these pieces replaced
(one `sample()` of 19 parameters; commit 'sampling: reference outputs of the old loop'), on the fake network and the
cases below. The rewrite must draw the same samples: same seeds, same noise, same order of CFG, guide and
thresholding, same learned-variance rule.
"""

from pathlib import Path

import torch
from diffusers import DDPMScheduler

REFERENCE = Path(__file__).parent / "fixtures" / "sampler_reference.safetensors"
SHAPE, SEEDS, STEPS = (3, 8, 8), [3, 11], 6


def fake_network(learned_variance: bool, prediction_type: str):
    """A fixed closed-form stand-in for a trained U-Net, `network(x_t, t, states, mask)`: it guesses x0 as
    1.5 tanh(a 1x1 channel mix of x_t + the image mean + the text states) (every pixel sees every other, as a U-Net's
    do; the text differs per image and per branch, so classifier-free guidance has two outputs to mix; the 1.5 leaves
    something to threshold) and answers in the prediction type, so that samples stay in range as a real model's do.
    With a learned variance, a second half in [-1, 1] (Improved DDPM's v)."""
    g = torch.Generator().manual_seed(0)
    w, wv = torch.randn(3, 3, generator=g) * 0.5, torch.randn(3, 3, generator=g) * 0.5
    alphas_cumprod = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod

    def network(x, t, states, mask):
        text = (states * mask[..., None]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
        x0 = 1.5 * torch.tanh(torch.einsum("oc,bchw->bohw", w, x) + 0.5 * x.mean(dim=(2, 3), keepdim=True) + text)
        a, s = alphas_cumprod[t].sqrt(), (1 - alphas_cumprod[t]).sqrt()
        eps = (x - a * x0) / s
        out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction_type]
        if not learned_variance:
            return out
        return torch.cat([out, torch.tanh(torch.einsum("oc,bchw->bohw", wv, x) + text)], dim=1)
    return network


def text_states():
    """(states, mask) of the prompts and of the negative prompt, two images."""
    g = torch.Generator().manual_seed(1)
    cond = (torch.randn(2, 4, 5, generator=g), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    uncond = (torch.randn(2, 4, 5, generator=g) * 0.1, torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]]))
    return cond, uncond


def pull_to_grey(x_t, t, alpha_bar, x0_hat):
    """An analytic gradient guide: the gradient of -|x0_hat|^2 / 2, scaled by alpha_bar_t (eps' = eps - sqrt(1 -
    alpha_bar) g moves x0_hat by (1 - alpha_bar) / sqrt(alpha_bar) g: bounded so, at every t)."""
    return -0.5 * alpha_bar * x0_hat


def edit_images():
    g = torch.Generator().manual_seed(2)
    init = torch.rand(2, *SHAPE, generator=g) * 2 - 1
    keep = torch.zeros(1, 1, *SHAPE[1:])
    keep[..., :, :4] = 1  # keep the left half
    return init, keep


def train_config(learned_variance: bool, prediction_type: str):
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False,
                         variance_type="learned_range" if learned_variance else "fixed_small").config


SAMPLER_RUNS = {"ddpm": ("ddpm", 0.0), "ddim": ("ddim", 0.0), "ddim-eta0.5": ("ddim", 0.5), "dpmsolver++": ("dpmsolver++", 0.0)}
VARIANTS = {
    "plain": {},
    "cfg": {"guidance_scale": 3.0},
    "learned-variance": {"learned_variance": True},
    "cfg-learned-variance": {"guidance_scale": 3.0, "learned_variance": True},
    "guide": {"guide": True},
    "static": {"thresholding": "static", "guidance_scale": 5.0},
    "dynamic": {"thresholding": "dynamic", "guidance_scale": 5.0},
    "dynamic-uncapped-p0.9": {"thresholding": "dynamic", "percentile": 0.9, "max_value": float("inf"),
                              "guidance_scale": 5.0},
    "v-everything": {"prediction_type": "v_prediction", "guidance_scale": 4.0, "guide": True, "thresholding": "dynamic",
                     "learned_variance": True},
    "sdedit-0.6": {"strength": 0.6},
    "sdedit-0.6-cfg": {"strength": 0.6, "guidance_scale": 3.0},
    "repaint-1": {"resample": 1},
    "repaint-3": {"resample": 3},
    "repaint-3-learned-variance-cfg": {"resample": 3, "learned_variance": True, "guidance_scale": 3.0},
}


def cases():
    """(name, sampler, eta, options) for every sampler x variant that the sampler can run (DPM-Solver++ refuses
    RePaint's resampling)."""
    for sampler_name, (sampler, eta) in SAMPLER_RUNS.items():
        for variant, options in VARIANTS.items():
            if sampler == "dpmsolver++" and options.get("resample", 1) > 1:
                continue
            yield f"{sampler_name}/{variant}", sampler, eta, options
