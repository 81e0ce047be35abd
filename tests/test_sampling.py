"""The sampling loop and the wrappers that compose into its denoiser (`trilemma.diffusion.sampling`).

The reference tensors in fixtures/sampler_reference.safetensors were written by the loop that these pieces replaced
(one `sample()` of 19 parameters; commit 'sampling: reference outputs of the old loop'), on the fake network and the
cases below. The rewrite must draw the same samples: same seeds, same noise, same order of CFG, guide and
thresholding, same learned-variance rule.
"""

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

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


def run_case(sampler: str, eta: float, o: dict) -> torch.Tensor:
    """One case through the composed pieces: CFG, then the guide, then thresholding; SDEdit's start; RePaint's step."""
    from trilemma.diffusion.denoiser import classifier_free_guidance
    from trilemma.diffusion.guidance import gradient_guidance
    from trilemma.diffusion.sampling import make_sampler, repaint, sample, sdedit
    from trilemma.diffusion.thresholding import thresholded

    prediction_type, learned = o.get("prediction_type", "epsilon"), o.get("learned_variance", False)
    scheduler = make_sampler(sampler, train_config(learned, prediction_type))
    cond, uncond = text_states()
    init, keep = edit_images()
    denoiser = classifier_free_guidance(fake_network(learned, prediction_type), cond, uncond, o.get("guidance_scale", 1.0))
    if o.get("guide"):
        denoiser = gradient_guidance(denoiser, pull_to_grey, scheduler.alphas_cumprod, prediction_type)
    denoiser = thresholded(denoiser, scheduler.alphas_cumprod, prediction_type, o.get("thresholding", "none"),
                           **{k: o[k] for k in ("percentile", "max_value") if k in o})
    return sample(denoiser, SHAPE, SEEDS, scheduler, STEPS, eta=eta,
                  start=sdedit(init, o["strength"]) if "strength" in o else None,
                  wrap_step=repaint(init, keep, o["resample"]) if "resample" in o else None, device="cpu")


@pytest.mark.parametrize("name,sampler,eta,options", list(cases()), ids=[c[0] for c in cases()])
def test_the_composed_sampler_draws_what_the_old_loop_drew(name, sampler, eta, options):
    reference = load_file(str(REFERENCE))[name]
    torch.testing.assert_close(run_case(sampler, eta, options), reference, atol=1e-5, rtol=0)


def test_the_reference_cases_differ_where_their_options_do():
    """Each option changes the samples (else matching the reference would say nothing about it); a learned variance
    changes DDPM's alone (the others take the mean)."""
    ref = load_file(str(REFERENCE))
    for sampler in SAMPLER_RUNS:
        plain = ref[f"{sampler}/plain"]
        for variant in VARIANTS:
            if variant != "plain" and f"{sampler}/{variant}" in ref:
                same = torch.allclose(ref[f"{sampler}/{variant}"], plain, atol=1e-3)
                assert same == (variant == "learned-variance" and sampler != "ddpm"), (sampler, variant)
    assert not torch.allclose(ref["ddim/static"], ref["ddim/dynamic"], atol=1e-3)


def test_a_step_reports_progress_with_the_current_sample():
    from trilemma.progress import listen

    seen = []
    with listen(lambda desc, step, total, preview: seen.append((desc, step, total, preview is not None))):
        run_case("ddim", 0.0, {"strength": 0.6})
    assert seen == [("denoising", k, 3, True) for k in (1, 2, 3)]  # SDEdit at 0.6 x 6 steps takes the last 3


def test_wrappers_without_an_effect_give_back_the_network_itself():
    from trilemma.diffusion.denoiser import classifier_free_guidance
    from trilemma.diffusion.thresholding import thresholded

    cond, uncond = text_states()
    network = fake_network(False, "epsilon")
    x, t = torch.randn(2, *SHAPE), torch.tensor(500)
    for scale, negative in ((1.0, uncond), (3.0, None)):  # no guidance: one batch of the prompts alone
        guided = classifier_free_guidance(network, cond, negative, scale)
        denoiser = thresholded(guided, torch.ones(1000), "epsilon", "none")
        assert denoiser is guided  # "none" thresholding gives back what it wraps
        assert torch.equal(denoiser(x, t), network(x, t, *cond))


def test_bad_options_are_refused_with_the_fix():
    from trilemma.diffusion.sampling import repaint, sdedit
    from trilemma.diffusion.thresholding import thresholded

    network = fake_network(False, "epsilon")
    with pytest.raises(ValueError, match="choose one of none, static, dynamic"):
        thresholded(network, torch.ones(1000), "epsilon", "hard")
    with pytest.raises(ValueError, match="percentile must lie in"):
        thresholded(network, torch.ones(1000), "epsilon", "dynamic", percentile=1.5)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        sdedit(torch.zeros(2, *SHAPE), 0.0)
    with pytest.raises(ValueError, match="resample must be at least 1"):
        repaint(torch.zeros(2, *SHAPE), torch.ones(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="one-step sampler"):
        run_case("dpmsolver++", 0.0, {"resample": 2})
    with pytest.raises(ValueError, match="steps must be at least 1"):
        from trilemma.diffusion.sampling import make_sampler, sample
        sample(network, SHAPE, SEEDS, make_sampler("ddim", train_config(False, "epsilon")), 0)
