"""Latent diffusion models to and from diffusers' folder layout.

trilemma's latent diffusion model is made of diffusers' and transformers' own classes (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel or T5EncoderModel, a `tokenizers` tokenizer, a diffusers scheduler), so exporting
is saving each part where `StableDiffusionPipeline` (or `StableDiffusionInpaintPipeline`, for an inpainting
model) looks for it: `model_index.json`, `unet/`, `vae/` (its `scaling_factor` is the model's latent scale),
`text_encoder/` (with `use_attention_mask`, so the pipeline passes the padding mask to it as trilemma does),
`tokenizer/` (a fast tokenizer; `model_max_length` is the encoder's length) and `scheduler/` (the model's
default sampler on its training schedule); the autoencoder's posterior variance is set to ~0, because trilemma
encodes by the posterior's mode and the pipelines sample it. Given the same initial latents, sampler settings
and guidance, the pipeline then draws what trilemma draws (text-to-image and inpainting, at the model's side).

What does not export, and why:
- a model trained with `cross_attention_mask` (the default before this exporter): its U-Net skips the
  prompt's padding tokens, and diffusers' pipelines pass the U-Net no mask; fine-tune it with
  `cross_attention_mask: false` first (configs/shapes-ldm-f8-sd.json does this for shapes-ldm-f8);
- CoordConv input channels, which no diffusers pipeline makes;
- a frozen pretrained text encoder (Imagen-style): it already lives in its own folder; not handled yet;
- the pixel cascade (shapes-imagen): diffusers' IFPipeline expects DeepFloyd IF's T5 and its own
  super-resolution stage classes, and the GAN and autoregressive families have no diffusers pipeline;
- an MMDiT model (`backbone: "mmdit"`, SD3's transformer): its parts export (`export_mmdit`: `transformer/`, which
  `SD3Transformer2DModel.from_pretrained` loads, `vae/`, `text_encoder/`, `tokenizer/` and the flow's `scheduler/`),
  but no whole pipeline fits: `StableDiffusion3Pipeline` builds the transformer's text input from two CLIP towers
  (their penultimate token states side by side, zero-padded to T5's width, then T5's 256 tokens after them, zeros
  when T5 is absent) and its pooled vector from the two towers' projected outputs. This model has one text encoder
  and mean-pools its token states, so the pipeline would hand the transformer text it never saw;
- unCLIP (shapes-unclip): diffusers' UnCLIPPipeline expects DALL-E 2's text projection and a super-resolution
  decoder chain that this model does not have, so no pipeline loads the whole model. Its prior is diffusers' own
  `PriorTransformer`, so that part exports alone (`prior/`, loaded by `PriorTransformer.from_pretrained`,
  with the prior's scheduler and what trilemma feeds it; `export_unclip_prior`).

`trilemma.load(DIR)` reads such a folder back into a trilemma model (any folder this exporter writes, or one
laid out the same way whose tokenizer has trilemma's special tokens: [PAD] [UNK] [BOS] [EOS] as ids 0-3).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trilemma.checkpoint import CheckpointError, model_folder, write_json
from trilemma.folders import ensure_writable
from trilemma.model import TrainableModel, seeded_noise
from trilemma.registry import model_class
from trilemma.text.encoder import TransformerTextEncoder
from trilemma.text.tokenizer import SPECIAL_TOKENS, PromptTokenizer

EXPORT_NOTE = "trilemma.json"  # generation defaults diffusers has no place for, read back by `trilemma.load`
PARTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
         "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json")
SAMPLER_CLASSES = {"dpmsolver++": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}


def export_diffusers(model_name: str | Path, out: str | Path) -> Path:
    """Write the model as a diffusers pipeline folder; returns the folder. One clear ValueError when it cannot."""
    # The classes by name (the registry's lookup): trilemma.load reads every folder through this module, which
    # must not import a family (and its libraries) for a model that does not need it.
    LatentDiffusion, LatentInpainting = model_class("LatentDiffusion"), model_class("LatentInpainting")
    model = load_folder(model_folder(model_name))  # what trilemma.load does (calling it would be a cycle: it imports this module)
    if type(model).__name__ == "UnCLIP":
        return export_unclip_prior(model, model_name, out)
    if not isinstance(model, LatentDiffusion):
        raise ValueError(f"{model_name} is a {type(model).__name__}; only latent diffusion models export to diffusers "
                         "(and unCLIP's prior alone; diffusers has no pipeline for trilemma's cascade, autoregressive or GAN models)")
    config = model.config
    if config.backbone == "mmdit":
        if not isinstance(model.text_encoder, TransformerTextEncoder):
            raise ValueError(f"{model_name} uses a frozen pretrained text encoder; exporting it is not supported yet")
        return export_mmdit(model, model_name, out)
    if config.cross_attention_mask:
        raise ValueError(f"{model_name} was trained with its U-Net skipping padding tokens (cross_attention_mask), which "
                         "diffusers' pipelines cannot do; fine-tune it with \"cross_attention_mask\": false "
                         "(see configs/shapes-ldm-f8-sd.json) and export that")
    if config.coord_channels:
        raise ValueError(f"{model_name} reads CoordConv channels, which diffusers' pipelines do not make")
    if not isinstance(model.text_encoder, TransformerTextEncoder):
        raise ValueError(f"{model_name} uses a frozen pretrained text encoder; exporting it is not supported yet")
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    out = ensure_writable(out)
    tokenizer = _tokenizer(model)
    text_encoder = model.text_encoder.transformer
    text_encoder.config.use_attention_mask = True  # the pipeline then hands the padding mask to the encoder, as trilemma does
    vae = _export_vae(model)
    scheduler = model.make_sampler(config.sampler)
    pipeline_class = StableDiffusionInpaintPipeline if isinstance(model, LatentInpainting) else StableDiffusionPipeline
    pipe = pipeline_class(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=model.unet, scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    note = {"exported_from": str(model_name), "model_class": type(model).__name__, "sampler": config.sampler,
            "num_inference_steps": config.sampling_steps, "guidance_scale": config.guidance_scale,
            "height": config.resolution, "width": config.resolution, "prediction_type": config.prediction_type,
            "training": {k: getattr(config, k) for k in ("condition_dropout", "min_snr_gamma")}}
    write_json(out / EXPORT_NOTE, note)
    (out / "README.md").write_text(_card(model_name, pipeline_class.__name__, note))
    return out


def _tokenizer(model):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=model.tokenizer._tok, model_max_length=model.tokenizer.max_length,
                                   pad_token=SPECIAL_TOKENS[0], unk_token=SPECIAL_TOKENS[1],
                                   bos_token=SPECIAL_TOKENS[2], eos_token=SPECIAL_TOKENS[3])


def _export_vae(model):
    vae = model.autoencoder.vae
    vae.register_to_config(scaling_factor=float(model.config.latent_scale))
    # trilemma encodes images (SDEdit's input, the inpainting model's masked image) by the posterior's mode;
    # diffusers' img2img and inpainting pipelines sample it. This autoencoder's posterior is wide (std 0.39 on
    # average for shapes-ldm-f8's), so the exported posterior's log-variance is set to -30 (std 3e-7): the
    # pipelines' sample is then the mode, and they edit as trilemma does. Mean and decoder are untouched, so
    # nothing else changes; only fine-tuning the exported autoencoder with its KL term would notice.
    moments = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    with torch.no_grad():
        moments.weight[vae.config.latent_channels:] = 0.0
        moments.bias[vae.config.latent_channels:] = -30.0
    return vae


def export_mmdit(model, model_name, out: str | Path) -> Path:
    """An MMDiT latent diffusion model's parts in diffusers' classes and layout (the module docstring says why no
    pipeline loads them whole): `transformer/` (SD3Transformer2DModel), `vae/`, `text_encoder/`, `tokenizer/`,
    `scheduler/` (FlowMatchEulerDiscreteScheduler) and what trilemma feeds the transformer (`trilemma.json`)."""
    config = model.config
    out = ensure_writable(out)
    model.transformer.save_pretrained(out / "transformer", safe_serialization=True)
    _export_vae(model).save_pretrained(out / "vae", safe_serialization=True)
    text_encoder = model.text_encoder.transformer
    text_encoder.config.use_attention_mask = True
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    _tokenizer(model).save_pretrained(out / "tokenizer")
    model.noise_scheduler.save_pretrained(out / "scheduler")
    note = {"exported_from": str(model_name), "model_class": type(model).__name__, "backbone": "mmdit",
            "prediction_type": "flow", "sampler": config.sampler, "num_inference_steps": config.sampling_steps,
            "guidance_scale": config.guidance_scale, "height": config.resolution, "width": config.resolution,
            "inputs": "hidden_states: latents x vae scaling_factor; encoder_hidden_states: the text encoder's last "
                      "token states (padding included); pooled_projections: their mean over the prompt's tokens "
                      "(attention mask 1); timestep: 1000 t on the path (1 - t) latents + t noise; output: noise - latents"}
    write_json(out / EXPORT_NOTE, note)
    (out / "README.md").write_text(f"""# {Path(str(model_name)).name}, exported from trilemma

A latent diffusion model with Stable Diffusion 3's backbone (MMDiT) trained by rectified flow with trilemma,
its parts in diffusers' classes:

```python
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
transformer = SD3Transformer2DModel.from_pretrained("THIS_FOLDER", subfolder="transformer")
vae = AutoencoderKL.from_pretrained("THIS_FOLDER", subfolder="vae")
scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained("THIS_FOLDER", subfolder="scheduler")
```

No diffusers pipeline loads it whole: `StableDiffusion3Pipeline` builds the transformer's text input from two
CLIP towers and T5, and this model reads one text encoder's token states and their mean (`{EXPORT_NOTE}` says
exactly what the transformer takes). `trilemma generate --model` runs the trilemma checkpoint this came from.
""")
    return out


def export_unclip_prior(model, model_name, out: str | Path) -> Path:
    """An unCLIP model's prior as a diffusers `PriorTransformer` folder (`prior/`), with the prior's sampler
    (`scheduler/`), the map from the CLIP's token states to the prior's width when they differ
    (`prior_text_proj.safetensors`) and what trilemma feeds it (`trilemma.json`). No diffusers pipeline loads the
    whole model (its decoder is trilemma's), so there is no model_index.json."""
    from safetensors.torch import save_file

    out = ensure_writable(out)
    model.prior.save_pretrained(out / "prior", safe_serialization=True)
    model.make_prior_sampler().save_pretrained(out / "scheduler")
    proj = getattr(model.prior_text_proj, "weight", None)
    if proj is not None:
        save_file({k: v.contiguous() for k, v in model.prior_text_proj.state_dict().items()}, out / "prior_text_proj.safetensors")
    note = {"exported_from": str(model_name), "model_class": "UnCLIP", "part": "prior", "clip": model.config.clip,
            "embed_scale": float(model.embed_scale), "prediction_type": "sample", "sampler": model.config.prior_sampler,
            "inputs": "hidden_states: noisy scaled image embedding; proj_embedding: CLIP text embedding x embed_scale; "
                      "encoder_hidden_states: the CLIP's token states (through prior_text_proj when present); "
                      "attention_mask: the prompt's; output: the clean image embedding x embed_scale"}
    write_json(out / EXPORT_NOTE, note)
    (out / "README.md").write_text(f"""# {Path(str(model_name)).name}'s prior, exported from trilemma

DALL-E 2's prior (from a CLIP text embedding to a CLIP image embedding), trained with trilemma on top of the CLIP
`{model.config.clip}`. It is diffusers' `PriorTransformer`:

```python
from diffusers import PriorTransformer
prior = PriorTransformer.from_pretrained("THIS_FOLDER", subfolder="prior")
```

Only the prior exports: diffusers' `UnCLIPPipeline` expects DALL-E 2's text projection and super-resolution
decoder chain, and this model's decoder is trilemma's (an Imagen-style cascade conditioned on the embedding), so
no diffusers pipeline loads the whole model. `{EXPORT_NOTE}` says what the prior reads and returns (embeddings are
scaled by `embed_scale`); `scheduler/` is its sampler (it predicts the clean embedding).
""")
    return out


def _card(name, pipeline: str, note: dict) -> str:
    extra = ", image=IMAGE, mask_image=MASK" if pipeline == "StableDiffusionInpaintPipeline" else ""
    return f"""# {Path(str(name)).name}, exported from trilemma

A latent diffusion model trained from scratch with trilemma, in diffusers' layout.

```python
from diffusers import {pipeline}
pipe = {pipeline}.from_pretrained("THIS_FOLDER")
image = pipe("a red circle to the left of a blue square"{extra}, num_inference_steps={note['num_inference_steps']},
             guidance_scale={note['guidance_scale']}, height={note['height']}, width={note['width']}).images[0]
```

It draws {note['height']} px images of the Shapes benchmark's vocabulary (its tokenizer knows only those
words). The scheduler is the one trilemma samples with ({note['sampler']}, trailing timestep spacing,
{note['prediction_type']}). `{EXPORT_NOTE}` holds trilemma's generation defaults; `trilemma.load(THIS_FOLDER)`
reads the folder back.
"""


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() and not (path / "config.json").is_file()


def load_folder(path: Path):
    """The model in a folder (`trilemma.load`'s last step): a diffusers pipeline folder, else a trilemma checkpoint."""
    return import_diffusers(path) if is_diffusers_folder(path) else TrainableModel.from_pretrained(path)


def import_diffusers(path: str | Path):
    """A trilemma latent diffusion model (or inpainting model) from a diffusers pipeline folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoConfig, AutoModelForTextEncoding, PreTrainedTokenizerFast

    path = Path(path)
    for part in PARTS:
        if not (path / part).is_file():
            raise CheckpointError(f"{path} is not a diffusers folder trilemma can read (no {part}; weights must be "
                                  "safetensors: pickled .bin files are not loaded)")
    try:
        index = json.loads((path / "model_index.json").read_text())
        unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True)
        text_config = AutoConfig.from_pretrained(path / "text_encoder", local_files_only=True)
        text_encoder = AutoModelForTextEncoding.from_pretrained(path / "text_encoder", local_files_only=True, use_safetensors=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer", local_files_only=True)
        scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError, KeyError) as e:  # a missing part, pickled weights only, a damaged config
        raise CheckpointError(f"{path} is not a diffusers folder trilemma can read ({str(e).splitlines()[0][:160]})") from None
    note = json.loads((path / EXPORT_NOTE).read_text()) if (path / EXPORT_NOTE).is_file() else {}
    u, v = unet.config, vae.config
    n = len(u.block_out_channels)
    if tuple(u.down_block_types) != ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1):
        raise CheckpointError(f"{path}: its U-Net's blocks {list(u.down_block_types)} are not trilemma's layout "
                              "(a plain first block, then cross-attention blocks)")
    arch = {"CLIPTextConfig": "clip", "T5Config": "t5"}.get(type(text_config).__name__)
    if arch is None:
        raise CheckpointError(f"{path}: text encoder {type(text_config).__name__} is neither CLIP's nor T5's")
    latent = v.latent_channels
    inpainting = u.in_channels == 2 * latent + 1
    if u.in_channels not in (latent, 2 * latent + 1):
        raise CheckpointError(f"{path}: a U-Net of {u.in_channels} input channels over {latent}-channel latents is "
                              "neither text-to-image nor inpainting")
    heads = text_config.num_attention_heads if arch == "clip" else text_config.num_heads
    layers = text_config.num_hidden_layers if arch == "clip" else text_config.num_layers
    hidden = text_config.hidden_size if arch == "clip" else text_config.d_model
    max_length = tokenizer.model_max_length
    config = {
        "resolution": v.sample_size,
        "autoencoder": {"resolution": v.sample_size, "block_out_channels": list(v.block_out_channels), "latent_channels": latent,
                        "layers_per_block": v.layers_per_block, "norm_num_groups": v.norm_num_groups,
                        "mid_block_attention": bool(v.mid_block_add_attention)},
        "latent_scale": float(v.scaling_factor),
        "unet_channels": list(u.block_out_channels), "layers_per_block": u.layers_per_block,
        "attention_head_dim": u.attention_head_dim,
        "text_encoder": {"hidden_size": hidden, "num_layers": layers, "num_heads": heads, "architecture": arch},
        "tokenizer": {"bpe": tokenizer.backend_tokenizer.to_str(), "max_length": max_length},
        "prediction_type": scheduler.get("prediction_type", "epsilon"), "beta_schedule": scheduler.get("beta_schedule", "linear"),
        "num_train_timesteps": scheduler.get("num_train_timesteps", 1000), "cross_attention_mask": False,
        "sampler": {v: k for k, v in SAMPLER_CLASSES.items()}.get(scheduler.get("_class_name"), "dpmsolver++"),
    }
    for key in ("num_inference_steps", "guidance_scale"):
        if key in note:
            config["sampling_steps" if key == "num_inference_steps" else key] = note[key]
    try:
        PromptTokenizer(max_length=max_length, bpe=config["tokenizer"]["bpe"])
    except Exception as e:  # tokenizers raises plain Exceptions for a damaged tokenizer.json
        raise CheckpointError(f"{path}: its tokenizer cannot be trilemma's ({e})") from None

    klass = model_class("LatentInpainting" if inpainting else "LatentDiffusion")
    model = klass.from_config(config)
    try:
        model.unet.load_state_dict(unet.state_dict())
        model.autoencoder.vae.load_state_dict(vae.state_dict())
        model.text_encoder.transformer.load_state_dict(text_encoder.state_dict())
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the model its configs describe ({str(e).splitlines()[0][:160]})") from None
    model.imported_from = {"diffusers": str(path), "pipeline": index.get("_class_name")}
    return model.eval()


@torch.no_grad()
def initial_latents(model, seeds: list[int]) -> torch.Tensor:
    """The starting noise trilemma draws for these seeds: hand it to a diffusers pipeline as `latents=` to get the
    same images."""
    return seeded_noise((model.latent_channels, model.latent_size, model.latent_size), seeds, "cpu")
