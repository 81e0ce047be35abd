"""Imagen's thresholding: checked against diffusers' own implementation on the same tensors."""

import pytest
import torch
from diffusers import DDPMScheduler

from trilemma.diffusion.thresholding import threshold, thresholded_output


def test_dynamic_thresholding_matches_diffusers():
    torch.manual_seed(0)
    x0 = torch.randn(6, 3, 16, 16) * torch.tensor([0.2, 0.9, 1.5, 3.0, 8.0, 20.0]).view(6, 1, 1, 1)
    # Capped as DeepFloyd IF runs it (stage I 1.5, SR stages 1.0), and uncapped as in Imagen's pseudocode.
    for p, cap in ((0.95, 1.5), (0.95, 1.0), (0.9, 3.0), (0.995, float("inf"))):
        ours = threshold(x0, "dynamic", p, cap)
        theirs = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=p,
                               sample_max_value=1e9 if cap == float("inf") else cap)._threshold_sample(x0)
        assert torch.allclose(ours, theirs, atol=1e-6), (p, cap)
    # Samples already inside [-1, 1] are untouched; saturated ones are pulled in, not clipped flat.
    out = threshold(x0, "dynamic", 0.995, float("inf"))
    assert torch.equal(out[0], x0[0]) and out.abs().max() <= 1.0
    assert (out[5].abs() == 1.0).float().mean() < 0.01


def test_the_cap_bounds_s_and_a_cap_of_one_is_static_clipping():
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8) * 10
    capped = threshold(x0, "dynamic", 0.95, 1.5)
    # With s capped at 1.5, x0 is clipped to [-1.5, 1.5] and divided by 1.5: the extremes land on +-1 exactly.
    assert torch.allclose(capped, x0.clamp(-1.5, 1.5) / 1.5)
    assert torch.equal(threshold(x0, "dynamic", 0.95, 1.0), threshold(x0, "static"))
    for bad in ((0.0, 1.5), (float("nan"), 1.5), (0.95, 0.5), (0.95, float("nan"))):
        with pytest.raises(ValueError, match="percentile|cap"):
            threshold(x0, "dynamic", *bad)


def test_static_thresholding_clips_and_none_is_identity():
    x0 = torch.linspace(-3, 3, 60).view(1, 1, 6, 10)
    assert torch.equal(threshold(x0, "static"), x0.clamp(-1, 1))
    assert threshold(x0, "none") is x0
    with pytest.raises(ValueError, match="unknown thresholding"):
        threshold(x0, "soft")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_thresholded_output_implies_the_thresholded_x0(prediction_type, mode):
    torch.manual_seed(1)
    sched = DDPMScheduler(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    x0, noise, t = torch.randn(4, 3, 8, 8) * 4, torch.randn(4, 3, 8, 8), torch.tensor([10, 300, 700, 990])
    xt = sched.add_noise(x0, noise, t)
    out = noise if prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    alpha_bar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    new = thresholded_output(out, xt, alpha_bar, prediction_type, mode)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    implied = (xt - s * new) / a if prediction_type == "epsilon" else a * xt - s * new
    assert torch.allclose(implied, threshold(x0, mode), atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_the_sampling_loop_keeps_thresholded_samples_in_range(sampler):
    from trilemma.diffusion.sampling import make_sampler, sample
    from trilemma.diffusion.thresholding import thresholded

    train = DDPMScheduler(prediction_type="epsilon", beta_schedule="squaredcos_cap_v2", clip_sample=False)
    target = torch.full((3, 4, 4), 5.0)  # a denoiser that always predicts an x0 far out of range
    alphas = train.alphas_cumprod

    def denoise(x, t):
        a = alphas[t].sqrt()
        return (x - a * target) / (1 - alphas[t]).sqrt()

    out = {mode: sample(thresholded(denoise, alphas, "epsilon", mode), (3, 4, 4), [0, 1],
                        make_sampler(sampler, train.config), 10) for mode in ("none", "static", "dynamic")}
    assert out["none"].abs().max() > 4
    assert out["static"].abs().max() <= 1.0 + 1e-4 and out["dynamic"].abs().max() <= 1.0 + 1e-4


def test_ddim_eta_adds_seeded_noise():
    from trilemma.diffusion.sampling import make_sampler, sample

    train = DDPMScheduler(prediction_type="epsilon", beta_schedule="squaredcos_cap_v2")
    denoise = lambda x, t: x  # noqa: E731
    run = lambda eta: sample(denoise, (2, 4, 4), [7], make_sampler("ddim", train.config), 5, eta=eta)  # noqa: E731
    assert torch.isfinite(run(1.0)).all()  # diffusers' float32 DDIM gives NaN here (see make_sampler)
    assert torch.equal(run(1.0), run(1.0)) and not torch.allclose(run(0.0), run(1.0))
