"""One command from a folder of captioned images to a model: `trilemma train --data DIR --family F`.

Each family trains in two stages, each through the one loop (`trilemma.train.loop`), each with its own
checkpoints and resumable (once the generator has started, a resume leaves the first stage as it is: the
generator has learnt its latents, and more minutes go to it alone):

| family         | first stage                       | generator                              |
|----------------|-----------------------------------|----------------------------------------|
| diffusion      | KL autoencoder, 4x down (8x > 64) | latent diffusion U-Net (Stable Diffusion), or with `backbone: mmdit` SD3's MMDiT with rectified flow |
| autoregressive | VQ tokenizer, 8x down (4x < 64)   | GPT over text and image tokens (DALL-E)   |
| gan            | KL autoencoder, 8x down (to 8x8)  | DF-GAN on its latents                     |

The prompt tokenizer is a byte-level BPE learnt from the training captions (a source with a word
vocabulary of its own, Shapes, keeps it), so any free text encodes. The folder written:

    OUT/first-stage/   the first stage's run (checkpoints/, final/, samples/, log.jsonl)
    OUT/generator/     the generator's run
    OUT/config.json, OUT/model.safetensors   the model `trilemma generate --model OUT` loads

Sizes follow a rule (`default_recipe`), which a recipe file overrides key by key:
- resolution R: the first stage downsamples 4x for the diffusion U-Net (8x above 64 px: a 16x16 grid at
  64 and 128 px), 8x for tokens (4x below 64 px) and 8x for the GAN, or less to keep an 8x8 grid;
- data size N: below 10,000 images the generators are half as wide (a small set is learnt, and
  over-fitted, by a small network; on a CPU it also takes less time per step);
- minutes M: the first stage gets 30% of them, the generator 70%, each stopping at its share.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trilemma.config import ConfigError, parse_config
from trilemma.data.sources import Epochs, build_dataset, parse_data_config
from trilemma.folders import FolderLock, ensure_writable
from trilemma.text.tokenizer import tokenizer_for_data
from trilemma.train.loop import TrainConfig, build_model, latest_checkpoint, train

FAMILIES = ("diffusion", "autoregressive", "gan")
STAGES = {"diffusion": ("KLAutoencoder", "LatentDiffusion"), "autoregressive": ("VQTokenizer", "DalleTransformer"),
          "gan": ("KLAutoencoder", "DFGAN")}
BACKBONES = ("unet", "mmdit")
FIRST_STAGE_SHARE = 0.3
SMALL_DATA = 10_000


@dataclass
class PipelineRecipe:
    """What `trilemma train RECIPE.json` takes when the recipe names a `family` (not a `model_class`)."""

    family: str
    data: dict
    output_dir: str = "runs/model"
    minutes: float = 30.0
    seed: int = 0
    tokenizer_vocab_size: int = 2000
    # The diffusion family's denoiser: "unet" (Stable Diffusion) or "mmdit" (SD3: joint attention, rectified flow).
    backbone: str = "unet"
    first_stage: dict = field(default_factory=dict)  # TrainConfig keys ("model" merged key by key) over the rule
    generator: dict = field(default_factory=dict)


def load_recipe(raw: dict, where: str = "recipe") -> PipelineRecipe:
    recipe = parse_config(PipelineRecipe, raw, where)
    if recipe.family not in FAMILIES:
        raise ConfigError(f"{where}: 'family' must be one of {', '.join(FAMILIES)}, got {recipe.family!r}")
    if recipe.minutes <= 0:
        raise ConfigError(f"{where}: 'minutes' must be above 0, got {recipe.minutes}")
    if recipe.backbone not in BACKBONES:
        raise ConfigError(f"{where}: 'backbone' must be one of {', '.join(BACKBONES)}, got {recipe.backbone!r}")
    if recipe.backbone != "unet" and recipe.family != "diffusion":
        raise ConfigError(f"{where}: 'backbone' {recipe.backbone!r} is the diffusion family's; drop it for {recipe.family}")
    data = parse_data_config(recipe.data, f"{where}: data")
    r = data.resolution
    if r < 16 or r & (r - 1):
        raise ConfigError(f"{where}: data.resolution must be a power of two of at least 16 (16, 32, 64, 128...), got {r}: "
                          "the first stages halve it and the generators' grids halve it again")
    return recipe


def _downsample(family: str, resolution: int) -> int:
    if family == "diffusion":
        return 8 if resolution > 64 else 4
    if family == "gan":  # DF-GAN's blocks need a grid of at least 8x8
        return max(1, min(8, resolution // 8))
    return 8 if resolution >= 64 else 4


def _channels(downsample: int, widths=(32, 32, 64, 64)) -> list[int]:
    """Encoder block widths for a 2^k downsampling: one block per halving, plus the first."""
    n = downsample.bit_length()  # 4 -> 3 blocks, 8 -> 4
    return list(widths[:n]) + [widths[-1]] * max(0, n - len(widths))


def default_recipe(family: str, resolution: int, n_images: int | None, minutes: float, tokenizer: dict,
                   backbone: str = "unet") -> tuple[dict, dict]:
    """(first-stage TrainConfig dict, generator TrainConfig dict) per the size rule of this module's docstring."""
    small = n_images is not None and n_images < SMALL_DATA
    f = _downsample(family, resolution)
    first_minutes, gen_minutes = FIRST_STAGE_SHARE * minutes, (1 - FIRST_STAGE_SHARE) * minutes
    loop = {"steps": 10**7, "warmup_steps": 100, "grad_clip": 1.0, "checkpoint_every": 200, "sample_every": 500}
    if family == "autoregressive":
        first = {"model_class": "VQTokenizer", "model": {
            "resolution": resolution, "block_out_channels": _channels(f), "latent_channels": 64,
            "codebook_size": 512, "codebook_dim": 32, "quantizer": "ema", "ssim_weight": 0.5}}
        first.update(batch_size=32, learning_rate=1e-3, ema_decay=0, warmup_steps=50)
    else:
        first = {"model_class": "KLAutoencoder", "model": {
            "resolution": resolution, "block_out_channels": _channels(f), "latent_channels": 4,
            "layers_per_block": 1, "norm_num_groups": 16, "kl_weight": 1e-6}}
        first.update(batch_size=32, learning_rate=1e-3, ema_decay=0.995, warmup_steps=50)
    text = {"hidden_size": 128, "num_layers": 2, "num_heads": 4}
    if family == "diffusion":
        gen = {"model_class": "LatentDiffusion", "model": {
            "resolution": resolution, "unet_channels": [32, 64, 64] if small else [64, 128, 128],
            "text_encoder": text, "tokenizer": tokenizer, "guidance_scale": 3.0},
            "learning_rate": 6e-4, "batch_size": 64, "ema_decay": 0.998}
        if backbone == "mmdit":
            # SD3's pair: the joint-attention transformer trained by rectified flow, patches chosen so the latent
            # grid is 8 x 8 tokens (the size bench/mmdit_sizes.py measured against the U-Net).
            latent = resolution // f
            gen["model"].update(backbone="mmdit", prediction_type="flow", min_snr_gamma=None, transformer={
                "num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32, "patch_size": max(1, latent // 8)})
    elif family == "autoregressive":
        gen = {"model_class": "DalleTransformer", "model": {
            "tokenizer": tokenizer, "n_layer": 4, "n_embd": 128 if small else 192, "n_head": 4 if small else 6,
            "guidance_scale": 3.0}, "learning_rate": 8e-4, "batch_size": 64, "ema_decay": 0.998}
    else:
        gen = {"model_class": "DFGAN", "model": {
            "resolution": resolution, "ngf": 32 if small else 64, "ndf": 32 if small else 64, "latent_blocks": 2,
            "text_encoder": {**text, "architecture": "t5"}, "tokenizer": tokenizer, "whiten_text": True},
            "learning_rate": 2e-4, "batch_size": 64, "ema_decay": 0.999, "warmup_steps": 0, "grad_clip": 0,
            "max_loss": 1000}
    first = {**loop, **first, "max_minutes": first_minutes}
    gen = {**loop, **gen, "max_minutes": gen_minutes}
    return first, gen


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = {**out.get(key, {}), **value} if key in ("model", "init", "data") and isinstance(value, dict) else value
    return out


def caption_tokenizer(recipe: PipelineRecipe, source) -> dict:
    """The tokenizer config the generator is built with: the source's word vocabulary (Shapes), or a BPE learnt
    from its captions (every caption of a folder; a stream's first 50,000, read without decoding its images)."""
    vocabulary = source.vocabulary()
    return tokenizer_for_data(vocabulary, source.captions(50_000) if vocabulary is None else [],
                              recipe.tokenizer_vocab_size).to_config()


def run_pipeline(recipe: PipelineRecipe, resume: bool = False, progress: bool = True) -> Path:
    """Train both stages; returns the model folder (OUT), which `trilemma.load` / `--model` take."""
    out = Path(recipe.output_dir)
    data = parse_data_config(recipe.data)
    # Read once here for what sizes the recipe (captions, the number of images, the grids' prompts); each stage's
    # loop then builds what its model trains on.
    source = build_dataset(data, recipe.seed, rank=0, world=1)
    state = out / "pipeline.json"
    if resume and state.is_file():
        tokenizer = json.loads(state.read_text())["tokenizer"]  # the generator's checkpoints were built with it
    else:
        tokenizer = caption_tokenizer(recipe, source)
    n_images = len(source.source) if isinstance(source, Epochs) else None  # a finite table of images
    first, gen = default_recipe(recipe.family, data.resolution, n_images, recipe.minutes, tokenizer, recipe.backbone)
    common = {"data": recipe.data, "seed": recipe.seed}
    first = _merge({**first, **common, "output_dir": str(out / "first-stage")}, recipe.first_stage)
    gen = _merge({**gen, **common, "output_dir": str(out / "generator")}, recipe.generator)
    # The generator is built around the first stage's shape and starts from its trained weights.
    first_key = "vq" if recipe.family == "autoregressive" else "autoencoder"
    gen["model"].setdefault(first_key, first["model"])
    gen.setdefault("init", {})[first_key] = str(out / "first-stage" / "final")
    prompts = source.validation_prompts()  # None: the recipe's own (Shapes keeps its fixed list)
    if prompts:
        gen.setdefault("validation_prompts", prompts)
    first_config, gen_config = TrainConfig.from_dict(first, "first stage"), TrainConfig.from_dict(gen, "generator")
    for config in (first_config, gen_config):  # a size that cannot be built fails now, not after the first stage
        build_model(config)

    with FolderLock(ensure_writable(out), "trilemma train --data"):
        state.write_text(json.dumps({"family": recipe.family, "tokenizer": tokenizer, "first_stage": first,
                                     "generator": gen}, indent=1))
        if resume and latest_checkpoint(Path(gen_config.output_dir)) is not None and (out / "first-stage" / "final").is_dir():
            # The generator has learnt this first stage's latents: training the first stage further (a resume
            # with more minutes) would pull them from under it. More minutes go to the generator alone.
            print("first stage: kept as it is (the generator has started on its latents)")
        else:
            train(first_config, resume=resume, progress=progress)
        final = train(gen_config, resume=resume, progress=progress)
        # The model at the top of the folder, so `--model OUT` finds it; its runs stay beside it.
        for path in final.iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)
    return out
