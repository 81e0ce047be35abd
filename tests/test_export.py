"""`trilemma export --format diffusers`: diffusers' own pipeline classes load the folder offline and, from the same
initial latents, scheduler and guidance, draw the images trilemma draws; `trilemma.load` reads the folder back."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_LDM, run_cli

PROMPTS = ["a red circle to the left of a blue square", "two green triangles"]


def _arrays(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.fixture(scope="module")
def unmasked_ldm_dir(tmp_path_factory):
    from trilemma.diffusion.latent_diffusion import LatentDiffusion

    torch.manual_seed(1)
    model = LatentDiffusion.from_config({**TINY_LDM, "cross_attention_mask": False, "latent_scale": 0.8})
    path = tmp_path_factory.mktemp("models") / "tiny-ldm-sd"
    model.save_pretrained(path)
    return path


def test_a_tiny_latent_diffusion_model_exports_to_stable_diffusion_pipeline_and_draws_the_same_images(unmasked_ldm_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    import trilemma
    from trilemma.interop.diffusers_layout import initial_latents

    code, out, err = run_cli("export", unmasked_ldm_dir, tmp_path / "sd", "--format", "diffusers")
    assert code == 0, err
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert not list((tmp_path / "sd").rglob("*.bin")), "weights must be safetensors"

    model = trilemma.load(unmasked_ldm_dir)
    ours = model.generate(PROMPTS, seed=5, steps=4, guidance_scale=3.0)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", local_files_only=True)
    theirs = pipe(PROMPTS, latents=initial_latents(model, [5, 6]), num_inference_steps=4, guidance_scale=3.0,
                  height=64, width=64).images
    a, b = _arrays(ours), _arrays(theirs)
    assert a.std() > 1.0, "the test model must draw something, not a flat image"
    assert np.abs(a - b).max() <= 1, "float rounding may move a pixel by one level, no more"
    assert np.abs(a - b).mean() < 0.02

    # And back: the diffusers folder loads as a trilemma model that draws the same bytes.
    again = trilemma.load(tmp_path / "sd")
    assert type(again).__name__ == "LatentDiffusion" and again.config.sampling_steps == model.config.sampling_steps
    assert np.array_equal(_arrays(again.generate(PROMPTS, seed=5, steps=4, guidance_scale=3.0)), a)


def test_an_inpainting_model_exports_to_the_inpaint_pipeline_and_draws_the_same_images(tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    import trilemma
    from trilemma.diffusion.editing import box_mask
    from trilemma.diffusion.inpainting import LatentInpainting
    from trilemma.interop.diffusers_layout import initial_latents
    from trilemma.shapes.scenes import render, sample_scene

    torch.manual_seed(2)
    model = LatentInpainting.from_config({**TINY_LDM, "cross_attention_mask": False})
    assert model.unet.config.in_channels == 9  # SD-inpainting's layout: latent 4 + mask 1 + masked image latents 4
    # A random autoencoder's posterior is wide: the pipeline samples it and trilemma takes its mode, which the
    # export reconciles (the exported posterior's variance is ~0). The pipeline prepares the image and mask itself.
    model.save_pretrained(tmp_path / "inpaint")
    model = trilemma.load(tmp_path / "inpaint")
    image, mask = render(sample_scene("test", 0)), box_mask((8, 8, 40, 40), 64, 64)
    ours = model.inpaint(PROMPTS, image, mask, seed=3, steps=3)
    code, _, err = run_cli("export", tmp_path / "inpaint", tmp_path / "sd-inpaint")
    assert code == 0, err
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "sd-inpaint", local_files_only=True)
    theirs = pipe(PROMPTS, image=image, mask_image=mask, latents=initial_latents(model, [3, 4]),
                  num_inference_steps=3, guidance_scale=model.config.guidance_scale, height=64, width=64).images
    a, b = _arrays(ours), _arrays(theirs)
    assert a.std() > 1.0
    assert np.abs(a - b).max() <= 1 and np.abs(a - b).mean() < 0.02
    assert type(trilemma.load(tmp_path / "sd-inpaint")).__name__ == "LatentInpainting"


def test_models_diffusers_cannot_run_are_refused_with_one_line(tiny_ldm_dir, tmp_path):
    code, _, err = run_cli("export", tiny_ldm_dir, tmp_path / "x")
    assert code == 2 and "cross_attention_mask" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("export", "shapes-dfgan", tmp_path / "y")
    assert code == 2 and "only latent diffusion models export" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists() or not any((tmp_path / "y").iterdir())


def test_a_damaged_diffusers_folder_is_refused_with_one_line(unmasked_ldm_dir, tmp_path):
    code, _, err = run_cli("export", unmasked_ldm_dir, tmp_path / "sd")
    assert code == 0, err
    (tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, _, err = run_cli("generate", "a red circle", "--model", tmp_path / "sd", "--out", tmp_path / "o")
    assert code == 2 and "not a diffusers folder trilemma can read" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_shipped_shapes_ldm_f8_exports_and_stable_diffusion_pipeline_draws_its_images(tmp_path):
    from diffusers import StableDiffusionPipeline

    import trilemma
    from trilemma.interop.diffusers_layout import export_diffusers, initial_latents

    model = trilemma.load("shapes-ldm-f8")
    export_diffusers("shapes-ldm-f8", tmp_path / "sd")
    prompts = PROMPTS + ["a yellow square above a cyan circle", "three purple circles"]
    seeds = list(range(10, 10 + len(prompts)))
    ours = model.generate(prompts, seed=seeds[0])
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", local_files_only=True)
    theirs = pipe(prompts, latents=initial_latents(model, seeds), num_inference_steps=model.config.sampling_steps,
                  guidance_scale=model.config.guidance_scale, height=64, width=64).images
    a, b = _arrays(ours), _arrays(theirs)
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05


@pytest.mark.slow
def test_the_shipped_inpainting_model_exports_and_the_inpaint_pipeline_draws_its_images(tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    import trilemma
    from trilemma.diffusion.editing import box_mask
    from trilemma.interop.diffusers_layout import export_diffusers, initial_latents
    from trilemma.shapes.scenes import render, sample_scene

    model = trilemma.load("shapes-ldm-f8-inpaint")
    export_diffusers("shapes-ldm-f8-inpaint", tmp_path / "sd")
    image, mask = render(sample_scene("test", 3)), box_mask((0, 0, 32, 64), 64, 64)
    ours = model.inpaint(PROMPTS, image, mask, seed=7)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "sd", local_files_only=True)
    theirs = pipe(PROMPTS, image=image, mask_image=mask, latents=initial_latents(model, [7, 8]),
                  num_inference_steps=model.config.sampling_steps, guidance_scale=model.config.guidance_scale,
                  height=64, width=64, generator=torch.Generator().manual_seed(0)).images
    a, b = _arrays(ours), _arrays(theirs)
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05


@pytest.mark.skipif("shapes-unclip" not in __import__("trilemma.registry").registry.shipped_models(), reason="not shipped")
def test_the_unclip_prior_exports_as_a_diffusers_prior_transformer(tmp_path):
    """No diffusers pipeline fits trilemma's unCLIP (its decoder is trilemma's); its prior is diffusers' own class."""
    from diffusers import PriorTransformer

    import trilemma

    code, out, err = run_cli("export", "shapes-unclip", tmp_path / "u")
    assert code == 0 and "PriorTransformer" in out, err
    assert not (tmp_path / "u" / "model_index.json").exists() and (tmp_path / "u" / "scheduler").is_dir()
    model = trilemma.load("shapes-unclip")
    prior = PriorTransformer.from_pretrained(tmp_path / "u", subfolder="prior").eval()
    torch.manual_seed(0)
    d, L = model.prior.config.embedding_dim, model.prior.config.num_embeddings
    args = dict(hidden_states=torch.randn(2, d), timestep=torch.tensor([10, 700]), proj_embedding=torch.randn(2, d),
                encoder_hidden_states=torch.randn(2, L, d), attention_mask=torch.ones(2, L, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(prior(**args).predicted_image_embedding, model.prior(**args).predicted_image_embedding)
