"""Editing: RePaint and SDEdit in the sampling loop, the inpainting model (GLIDE / SD-inpainting), `trilemma edit`
and `trilemma generate --init-image`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_LDM, run_cli, tiny_train_config


def _random_denoiser(seed=0):
    torch.manual_seed(seed)
    w = torch.randn(4, 4) * 0.3

    def denoise(x, t, states, mask):
        # A 1x1 map plus the image mean: every pixel depends on every other, as a U-Net's do.
        return torch.einsum("oc,bchw->bohw", w, x) + 0.5 * x.mean(dim=(2, 3), keepdim=True) + 0.1 * states.mean()
    return denoise


def _sample(denoise=None, sampler="dpmsolver++", steps=10, init=None, strength=1.0, known=None, resample=1):
    from diffusers import DDPMScheduler

    from trilemma.diffusion.denoiser import classifier_free_guidance
    from trilemma.diffusion.sampling import make_sampler, repaint, sample, sdedit

    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    cond = (torch.ones(2, 3, 8), torch.ones(2, 3, dtype=torch.long))
    return sample(classifier_free_guidance(denoise or _random_denoiser(), cond, None, 1.0), (4, 8, 8), [0, 1],
                  make_sampler(sampler, sched.config), steps, device="cpu",
                  start=sdedit(init, strength) if init is not None else None,
                  wrap_step=repaint(*known, resample) if known is not None else None)


def test_repaint_keeps_the_known_region_exactly_and_draws_the_hole():
    x0 = torch.randn(2, 4, 8, 8)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :, :4] = 1  # keep the left half
    plain = _sample()
    for kw in ({}, {"sampler": "ddim", "resample": 3}, {"sampler": "ddpm", "resample": 2}):
        out = _sample(known=(x0, keep), **kw)
        assert torch.allclose(out[..., :4], x0[..., :4], atol=1e-5), kw
        assert not torch.allclose(out[..., 4:], x0[..., 4:], atol=0.1)
    # The hole is the model's: without resampling it is not the plain sample (the kept half steers it through the model)
    assert not torch.allclose(_sample(known=(x0, keep))[..., 4:], plain[..., 4:])


@pytest.mark.parametrize("sampler,resample", [("dpmsolver++", 1), ("ddim", 3), ("ddpm", 2)])
def test_repaint_calls_the_model_steps_times_resample_times(sampler, resample):
    calls = []
    denoise = _random_denoiser()

    def counting(x, t, states, mask):
        calls.append(int(t))
        return denoise(x, t, states, mask)
    _sample(known=(torch.zeros(2, 4, 8, 8), torch.ones(1, 1, 8, 8)), sampler=sampler, resample=resample, steps=7,
            denoise=counting)
    assert len(calls) == 7 * resample and calls[:resample] == [calls[0]] * resample


def test_repaint_noises_the_kept_region_to_where_ddim_lands():
    """DDIM steps by T // steps, not always to the next listed timestep (trailing spacing at 30 steps: 966 -> 933,
    listed 932): the kept region must be noised to the level the step lands on, read off the step itself."""
    from diffusers import DDPMScheduler

    from trilemma.diffusion.sampling import landing_alpha_bar, make_sampler

    sched = make_sampler("ddim", DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
    sched.set_timesteps(30)
    ab = sched.alphas_cumprod.float()
    x = torch.ones(1, 1, 2, 2)
    for i, t in enumerate(sched.timesteps):
        # epsilon 0, eta 0: x_prev = sqrt(ab_prev / ab_t) x_t, so the landing level is ab_t (x_prev / x_t)^2
        landed = ab[t] * (sched.step(torch.zeros_like(x), t, x).prev_sample.float()[0, 0, 0, 0] / x[0, 0, 0, 0]) ** 2
        assert torch.isclose(landing_alpha_bar(sched, ab, sched.timesteps, i), landed, rtol=1e-4), (i, int(t))


@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim", "ddpm"])
def test_sdedit_takes_the_last_strength_x_steps_timesteps_as_diffusers_img2img(sampler):
    calls = []
    denoise = _random_denoiser()

    def counting(x, t, states, mask):
        calls.append(int(t))
        return denoise(x, t, states, mask)
    _sample(init=torch.zeros(2, 4, 8, 8), strength=0.55, steps=20, sampler=sampler, denoise=counting)
    from diffusers import DDPMScheduler

    from trilemma.diffusion.sampling import make_sampler

    sched = make_sampler(sampler, DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").config)
    sched.set_timesteps(20)
    assert calls == [int(t) for t in sched.timesteps[20 - int(20 * 0.55):]]  # img2img's get_timesteps


def test_repaint_resampling_is_refused_with_a_multistep_solver():
    with pytest.raises(ValueError, match="one-step sampler"):
        _sample(known=(torch.zeros(2, 4, 8, 8), torch.ones(1, 1, 8, 8)), resample=2)


def test_sdedit_strength_moves_the_result_away_from_the_init_image_monotonically():
    init = torch.randn(2, 4, 8, 8)
    gaps = [(_sample(init=init, strength=s, steps=20) - init).abs().mean().item() for s in (0.1, 0.5, 1.0)]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert gaps[0] < 0.25
    with pytest.raises(ValueError, match="leaves no denoising step"):
        _sample(init=init, strength=0.04, steps=20)


def test_the_inpainting_model_starts_as_its_donor_and_trains_on_masks(tmp_path):
    import trilemma
    from trilemma.diffusion.editing import box_mask
    from trilemma.diffusion.inpainting import LatentInpainting
    from trilemma.diffusion.latent_diffusion import LatentDiffusion
    from trilemma.shapes.scenes import render, sample_scene
    from trilemma.train.loop import TrainConfig, train

    torch.manual_seed(0)
    donor = LatentDiffusion.from_config({**TINY_LDM, "cross_attention_mask": False, "latent_scale": 0.9})
    donor.save_pretrained(tmp_path / "donor")
    model = LatentInpainting.from_config({**TINY_LDM, "cross_attention_mask": False})
    model.init_from(str(tmp_path / "donor"))
    assert model.config.latent_scale == 0.9 and model.unet.conv_in.weight[:, 4:].abs().sum() == 0
    # New channels start at zero: whatever the mask says, the first output is the donor's (SD-inpainting's start).
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    states, mask = donor.encode_text(["a red circle", "a blue square"])
    cond = torch.randn(2, 5, 8, 8)
    assert torch.allclose(model.denoise(torch.cat([x, cond], 1), t, states, mask), donor.denoise(x, t, states, mask), atol=1e-5)

    cfg = tiny_train_config(tmp_path / "run", tmp_path, steps=3, model_class="LatentInpainting",
                            model={**TINY_LDM, "cross_attention_mask": False}, init={"model": str(tmp_path / "donor")})
    final = train(TrainConfig.from_file(cfg), progress=False)
    trained = trilemma.load(final)
    assert isinstance(trained, LatentInpainting) and trained.config.latent_scale == 0.9
    assert trained.unet.conv_in.weight[:, 4:].abs().sum() > 0, "the new channels must learn"
    image = render(sample_scene("test", 0))
    out = trained.inpaint(["a red circle"], image, box_mask((0, 0, 32, 32), 64, 64), seed=0, steps=2)
    assert out[0].size == (64, 64)
    assert trained.generate(["a red circle"], steps=2)[0].size == (64, 64)  # text-to-image: the whole image masked
    assert len(trained.inpaint(["a red circle"], image, box_mask((0, 0, 32, 32), 64, 64), steps=2, method="repaint")) == 1
    with pytest.raises(ValueError, match="resample is RePaint's"):  # the model reads the mask; resampling is RePaint's
        trained.inpaint(["a red circle"], image, box_mask((0, 0, 32, 32), 64, 64), steps=2, sampler="ddim", resample=2)


def test_training_masks_cover_the_chosen_object_boxes_strokes_and_whole_images():
    from trilemma.diffusion.editing import training_mask

    rng = np.random.default_rng(0)
    box = (0.25, 0.25, 0.25)  # x, y, side
    masks = [training_mask(rng, 64, [box], full=0.1) for _ in range(400)]
    assert all(m.shape == (1, 64, 64) and set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    full = sum(bool(m.all()) for m in masks)
    on_object = sum(bool(m[0, 16:32, 16:32].all()) and not m.all() for m in masks)
    assert 20 <= full <= 70 and on_object >= 120, (full, on_object)


def test_masks_and_boxes_are_checked(tmp_path):
    from trilemma.diffusion.editing import box_mask, mask_tensor

    with pytest.raises(ValueError, match="0 <= x0 < x1 <= 64"):
        box_mask((10, 10, 5, 20), 64, 64)
    with pytest.raises(ValueError, match="the mask is empty"):
        mask_tensor(Image.new("L", (64, 64), 0), 64)
    m = mask_tensor(Image.new("L", (32, 32), 200), 64)
    assert m.shape == (1, 1, 64, 64) and m.min() == 1


def _scene_png(path):
    from trilemma.shapes.scenes import render, sample_scene

    render(sample_scene("test", 1)).save(path)
    return path


def test_edit_on_the_command_line_writes_an_imagefolder_and_keeps_unmasked_pixels(tiny_ldm_dir, tmp_path):
    src = _scene_png(tmp_path / "in.png")
    # The prompt after the options, as the docs write it (an optional positional would refuse it on Python 3.11).
    code, out, err = run_cli("edit", src, "--box", 0, 0, 32, 64, "a red circle", "--model", tiny_ldm_dir, "-n", 2,
                             "--steps", 2, "--keep-unmasked", "--out", tmp_path / "e")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "e" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["000000.png", "000001.png"] and rows[0]["method"] == "repaint"
    assert rows[1]["seed"] == 1 and (tmp_path / "e" / "grid.png").is_file()
    edited, original = np.asarray(Image.open(tmp_path / "e" / "000000.png")), np.asarray(Image.open(src))
    assert np.array_equal(edited[:, 32:], original[:, 32:])  # outside the box: the input's own pixels
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 64, 64))
    mask.save(tmp_path / "mask.png")
    code, _, err = run_cli("edit", src, "a blue square", "--mask", tmp_path / "mask.png", "--model", tiny_ldm_dir,
                           "--steps", 2, "--sampler", "ddim", "--resample", 2, "--out", tmp_path / "m")
    assert code == 0, err


@pytest.mark.parametrize("args,expected", [
    (["{src}", "a red circle", "--model", "{m}"], "say where to draw"),
    (["{src}", "--box", "0", "0", "8", "8", "--model", "{m}"], "required: prompt"),
    (["{src}", "  ", "--box", "0", "0", "8", "8", "--model", "{m}"], "give a prompt"),
    (["{src}", "a red circle", "--box", "0", "0", "8", "8", "--model", "{m}", "--sampler", "foo"], "invalid choice"),
    (["{src}", "a red circle", "--box", "0", "0", "80", "8", "--model", "{m}"], "0 <= x0 < x1 <= 64"),
    (["{tmp}/missing.png", "a red circle", "--box", "0", "0", "8", "8", "--model", "{m}"], "no image at"),
    (["{src}", "a red circle", "--mask", "{tmp}/black.png", "--model", "{m}"], "has no white pixel"),
    (["{src}", "a red circle", "--mask", "{tmp}/small.png", "--model", "{m}"], "give a mask of the image's size"),
    (["{src}", "a red circle", "--box", "0", "0", "8", "8", "--model", "shapes-dfgan"], "does not inpaint"),
    (["{src}", "a red circle", "--box", "0", "0", "8", "8", "--model", "{m}", "--method", "model"], "needs an inpainting model"),
    (["{src}", "a red circle", "--box", "0", "0", "8", "8", "--model", "{m}", "--resample", "2"], "one-step sampler"),
])
def test_bad_edits_get_one_line_and_exit_2(tiny_ldm_dir, tmp_path, args, expected):
    src = _scene_png(tmp_path / "in.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "black.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
    argv = [a.format(src=src, m=tiny_ldm_dir, tmp=tmp_path) for a in args]
    code, _, err = run_cli("edit", *argv, "--steps", 2, "--out", tmp_path / "o")
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_generate_init_image_on_the_command_line(tiny_ldm_dir, tmp_path):
    src = _scene_png(tmp_path / "in.png")
    code, _, err = run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--init-image", src, "--strength", 0.5,
                           "--steps", 4, "-n", 2, "--out", tmp_path / "g")
    assert code == 0, err
    assert len(list((tmp_path / "g").glob("0*.png"))) == 2
    code, _, err = run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--strength", 0.5, "--out", tmp_path / "h")
    assert code == 2 and "--init-image" in err
    code, _, err = run_cli("generate", "a red circle", "--model", tiny_ldm_dir, "--init-image", src, "--strength", 0.1,
                           "--steps", 4, "--out", tmp_path / "g")  # 0.1 x 4 steps: none; refused before g is touched
    assert code == 2 and "no denoising step" in err and len(list((tmp_path / "g").glob("0*.png"))) == 2
    assert len((tmp_path / "g" / "metadata.jsonl").read_text().splitlines()) == 2
    code, _, err = run_cli("generate", "a red circle", "--model", "shapes-dfgan", "--init-image", src, "--out", tmp_path / "i")
    assert code == 2 and "image-to-image takes a diffusion model" in err and len(err.strip().splitlines()) == 1


def test_a_batch_of_different_edits_draws_what_each_edit_draws_alone(tiny_ldm_dir):
    import trilemma
    from trilemma.diffusion.editing import box_mask
    from trilemma.shapes.scenes import render, sample_scene

    model = trilemma.load(tiny_ldm_dir)
    images = [render(sample_scene("test", i)) for i in (2, 3)]
    masks = [box_mask((0, 0, 32, 32), 64, 64), box_mask((32, 16, 64, 48), 64, 64)]
    prompts = ["a red circle", "a blue square"]
    batch = model.inpaint(prompts, images, masks, seed=4, steps=3)
    alone = [model.inpaint([p], im, mk, seed=4 + k, steps=3)[0] for k, (p, im, mk) in enumerate(zip(prompts, images, masks))]
    for a, b in zip(batch, alone):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    with pytest.raises(ValueError, match="one per prompt"):
        model.inpaint(prompts + ["a green circle"], images, masks[0], steps=2)


@pytest.mark.parametrize("name", ["shapes-imagen", "shapes-unclip"])
def test_repaint_with_a_pixel_cascade_keeps_the_unmasked_pixels_exactly(name):
    import trilemma
    from trilemma.diffusion.editing import box_mask
    from trilemma.registry import shipped_models
    from trilemma.shapes.scenes import render, sample_scene

    if name not in shipped_models():
        pytest.skip(f"{name} is not shipped")
    model = trilemma.load(name)
    image = render(sample_scene("test", 6))
    out = model.inpaint(["a cyan square to the left of a red triangle"], image, box_mask((32, 0, 64, 64), 64, 64),
                        seed=0, steps=3)
    a, b = np.asarray(out[0], dtype=int), np.asarray(image, dtype=int)
    assert np.array_equal(a[:, :32], b[:, :32])  # every stage keeps the input at its own side; the last is 64 px
    assert np.abs(a[:, 32:] - b[:, 32:]).mean() > 1.0  # and the hole is drawn anew
    sdedit = model.generate(["a red circle"], seed=0, steps=4, init_image=image, strength=0.5)
    assert sdedit[0].size == (64, 64)
