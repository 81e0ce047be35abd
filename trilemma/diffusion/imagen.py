"""Imagen-style cascaded pixel diffusion (Saharia et al., 2022), sized for a CPU.

A base U-Net draws small pixel images from text; each super-resolution (SR)
stage draws the next resolution conditioned on the text and on the previous
stage's image, upsampled and concatenated to its input channels. SR stages
train with noise conditioning augmentation (Ho et al., 2022, "Cascaded
Diffusion Models"): the low-resolution input is noised to a random level,
and the level is an input of the U-Net (diffusers' `class_embed_type=
"timestep"` adds its embedding to the timestep's), so at sampling time a
chosen level (0.2 by default) hides the base stage's artifacts from the SR
stage. Sampling uses classifier-free guidance and Imagen's dynamic
thresholding, through the loop of `trilemma.diffusion.sampling`.

Stages are independent networks, each with its own text encoder (trained
jointly) or one shared frozen pretrained encoder (Imagen's frozen T5), and
each with its own optimizer, so one run can train every stage or only some
(`train_stages`), and a stage can start from another run's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from trilemma.clip import load_noise_aware_clip
from trilemma.diffusion.editing import edit_rows, init_edit, inpaint_edit, inpainting_method, stage_edit
from trilemma.diffusion.denoiser import classifier_free_guidance
from trilemma.diffusion.guidance import gradient_guidance, noise_aware_clip_guide
from trilemma.diffusion.objective import VARIANCE_TYPES, denoising_loss
from trilemma.diffusion.sampling import make_sampler, sample
from trilemma.diffusion.thresholding import UNCAPPED, check_threshold_options, thresholded
from trilemma.diffusion.options import IMAGEN
from trilemma.model import TextToImageModel, check_prompts, image_seeds, seeded_noise, to_pil
from trilemma.options import GenerateOptions
from trilemma.text.encoder import TextEncoderConfig, TransformerTextEncoder
from trilemma.text.pretrained import PretrainedTextEncoder
from trilemma.text.tokenizer import PromptTokenizer


@dataclass
class ImagenConfig:
    resolutions: tuple[int, ...] = (32, 64)  # the base stage's, then each SR stage's output
    unet_channels: tuple[tuple[int, ...], ...] = ((64, 128, 128), (32, 64, 128))
    layers_per_block: int = 1
    attention_head_dim: int = 8
    # SR stages put attention (self and text cross-attention) only on their lowest `sr_attention_levels`
    # resolutions, as Imagen's Efficient U-Net does: the low-resolution image already carries the layout,
    # and attention at 64 px would cost most of the stage. None: every level but the first.
    sr_attention_levels: int | None = None
    # SR stages train on random crops of this size (Imagen trains its SR stages on crops): the U-Net is
    # convolutional, so it samples whole images, and a 32 px crop of a 64 px stage costs a quarter.
    sr_crop: int | None = None
    # Self-attention in the SR stages. None: off when they train on crops (attention over a crop's tokens
    # does not carry over to a whole image's), on otherwise. Text cross-attention stays either way.
    sr_self_attention: bool | None = None
    # SR stages train on the first `sr_batch_size` samples of each batch (None: all of it): on a CPU the
    # 64 px stage costs several times the base per image, and it learns its easier task from fewer.
    sr_batch_size: int | None = None
    text_encoder: dict | list = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "architecture": "t5"})
    tokenizer: dict = field(default_factory=lambda: PromptTokenizer().to_config())
    prediction_type: str = "v_prediction"
    variance_type: str = "fixed_small"  # or "learned_range" (Improved DDPM): the U-Nets also output the variance
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    condition_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    noise_augmentation: bool = True
    max_train_aug_level: float = 1.0  # training noises the SR input at a level drawn uniformly from [0, this]
    sampling_aug_level: float = 0.2
    train_stages: tuple[int, ...] | None = None  # None: all stages
    sampler: str = "dpmsolver++"
    sampling_steps: int = 25
    sr_sampling_steps: int = 15
    guidance_scale: float = 3.0
    sr_guidance_scale: float | None = None  # None: the base's guidance_scale
    thresholding: str = "dynamic"
    # Dynamic thresholding as DeepFloyd IF runs it: percentile 0.95, s capped at 1.5 in the base stage and
    # at 1.0 in the SR stages (there the cap makes it static clipping). None: uncapped (Imagen's pseudocode).
    threshold_percentile: float = 0.95
    threshold_max_value: float | None = 1.5
    sr_threshold_max_value: float | None = 1.0


class ImagenCascade(TextToImageModel):
    family = "diffusion"
    config_class = ImagenConfig
    init_keys = ("stages",)  # {stage: folder}: stages to start from another cascade's
    generate_options = IMAGEN

    def __init__(self, config: ImagenConfig):
        super().__init__()
        if config.variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {config.variance_type!r}; choose one of {', '.join(VARIANCE_TYPES)}")
        if len(config.unet_channels) != len(config.resolutions):
            raise ValueError("give one unet_channels entry per stage resolution")
        for name in ("max_train_aug_level", "sampling_aug_level"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], not {getattr(config, name)}")
        if any(b <= a for a, b in zip(config.resolutions, config.resolutions[1:])):
            raise ValueError(f"stage resolutions must increase, got {config.resolutions}")
        if config.sr_crop is not None:
            factor = 2 ** (max(len(c) for c in config.unet_channels[1:]) - 1) if n_sr(config) else 1
            if config.sr_crop % factor or any(config.sr_crop > r for r in config.resolutions[1:]):
                raise ValueError(f"sr_crop {config.sr_crop} must divide by {factor} (the SR U-Nets' down-sampling) "
                                 f"and be no larger than an SR stage's resolution {config.resolutions[1:]}")
        for cap in (config.threshold_max_value, config.sr_threshold_max_value):
            check_threshold_options(config.threshold_percentile, UNCAPPED if cap is None else cap)
        self.config = config
        self.resolution = config.resolutions[-1]
        self.tokenizer = PromptTokenizer.from_config(config.tokenizer)
        n = len(config.resolutions)
        # One text-encoder spec for every stage, or a list with one per stage (so a frozen pretrained base can sit
        # under an SR stage with its own trained encoder). Stages naming the same pretrained folder share one model.
        specs = config.text_encoder if isinstance(config.text_encoder, list) else [config.text_encoder] * n
        if len(specs) != n:
            raise ValueError(f"give one text_encoder spec per stage ({n}), not {len(specs)}")
        encoders, tokenizers, saved, frozen = [], [], [], {}
        for spec in specs:
            if "pretrained" in spec:
                key = spec["pretrained"]
                if key not in frozen:
                    frozen[key] = PretrainedTextEncoder(spec["pretrained"], spec.get("max_length", 32), spec.get("sha256"))
                encoder = frozen[key]
                tokenizers.append(encoder.tokenize)
                saved.append(encoder.to_config())
            else:
                encoder = TransformerTextEncoder(TextEncoderConfig(
                    vocab_size=self.tokenizer.vocab_size, max_length=self.tokenizer.max_length, **spec))
                tokenizers.append(self.tokenizer)
                saved.append(dict(spec))
            encoders.append(encoder)
        config.text_encoder = saved if isinstance(config.text_encoder, list) else saved[0]
        self.text_encoders = nn.ModuleList(encoders)
        self.tokenizers = tokenizers
        self.unets = nn.ModuleList(self._make_unet(k) for k in range(n))
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                                             prediction_type=config.prediction_type, clip_sample=False,
                                             variance_type=config.variance_type)

    def core_networks(self):
        return list(self.unets)

    def _make_unet(self, stage: int) -> UNet2DConditionModel:
        return UNet2DConditionModel(**self._unet_kwargs(stage))

    def _unet_kwargs(self, stage: int) -> dict:
        """diffusers UNet2DConditionModel arguments of one stage (a subclass adds conditioning inputs)."""
        channels = tuple(self.config.unet_channels[stage])
        levels = len(channels)
        sr = stage > 0
        attention = levels - 1
        if sr and self.config.sr_attention_levels is not None:
            attention = min(levels, self.config.sr_attention_levels)
        return dict(
            sample_size=self.config.resolutions[stage], in_channels=6 if sr else 3,
            out_channels=6 if self.config.variance_type == "learned_range" else 3,
            down_block_types=("DownBlock2D",) * (levels - attention) + ("CrossAttnDownBlock2D",) * attention,
            up_block_types=("CrossAttnUpBlock2D",) * attention + ("UpBlock2D",) * (levels - attention),
            block_out_channels=channels, layers_per_block=self.config.layers_per_block,
            cross_attention_dim=self.text_encoders[stage].hidden_size, attention_head_dim=self.config.attention_head_dim,
            norm_num_groups=min(16, channels[0]),
            # SR stages: the noise-augmentation level is a second timestep-like input.
            class_embed_type="timestep" if sr else None,
            # Trained on crops, an SR stage keeps text cross-attention but drops self-attention (Imagen does
            # the same): attention learned over a crop's tokens would not carry over to the whole image's.
            **({"only_cross_attention": True, "mid_block_type": "UNetMidBlock2D"} if sr and not self._sr_self_attention else {}),
        )

    @property
    def _sr_self_attention(self) -> bool:
        return self.config.sr_crop is None if self.config.sr_self_attention is None else self.config.sr_self_attention

    @property
    def stages(self) -> range:
        return range(len(self.config.resolutions))

    # --- config ---------------------------------------------------------------
    def external_prefixes(self) -> tuple[str, ...]:
        return tuple(f"text_encoders.{k}." for k, e in enumerate(self.text_encoders) if isinstance(e, PretrainedTextEncoder))

    # --- pieces -----------------------------------------------------------------
    def encode_text(self, stage: int, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.unets[stage].parameters()).device
        ids, mask = self.tokenizers[stage](prompts)
        states, _ = self.text_encoders[stage](ids.to(device), mask.to(device))
        return states, mask.to(device)

    def aug_timestep(self, level: torch.Tensor) -> torch.Tensor:
        """A noise-augmentation level in [0, 1] as a training-schedule timestep."""
        return (level * (self.config.num_train_timesteps - 1)).round().long()

    def low_res_condition(self, stage: int, low: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The SR input: the lower-resolution image upsampled to this stage, noised to `level` (if augmentation is on)."""
        size = self.config.resolutions[stage]
        up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        if not self.config.noise_augmentation:
            return up
        noised = self.noise_scheduler.add_noise(up, F.interpolate(noise, size=(size, size), mode="nearest"), self.aug_timestep(level))
        return torch.where((level > 0).view(-1, 1, 1, 1), noised, up)  # level 0: the clean upsampled image

    def denoise(self, stage: int, x, t, states, mask, low_res=None, aug_t=None) -> torch.Tensor:
        if stage == 0:
            return self.unets[0](x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        if x.shape[0] != low_res.shape[0]:  # classifier-free guidance doubled the batch: the image condition is shared
            low_res, aug_t = torch.cat([low_res, low_res]), torch.cat([aug_t, aug_t])
        return self.unets[stage](torch.cat([x, low_res], dim=1), t, encoder_hidden_states=states,
                                 encoder_attention_mask=mask, class_labels=aug_t).sample

    # --- training ---------------------------------------------------------------
    def trained_stages(self) -> tuple[int, ...]:
        stages = tuple(self.stages) if self.config.train_stages is None else tuple(self.config.train_stages)
        if not stages or any(s not in self.stages for s in stages):
            raise ValueError(f"train_stages {self.config.train_stages} must name stages of {list(self.stages)}")
        return stages

    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0):
        optimizers = {}
        for s in self.trained_stages():
            params = [p for p in list(self.unets[s].parameters()) + list(self.text_encoders[s].parameters()) if p.requires_grad]
            optimizers[f"stage{s}"] = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
        return optimizers

    def init_training(self, init: dict, device) -> None:
        """init.stages: {stage: folder} starts those stages (U-Net and text encoder) from another cascade's
        weights, e.g. to train an SR stage further on top of a finished base."""
        for stage, source in (init.get("stages") or {}).items():
            donor = ImagenCascade.from_pretrained(source)
            k = int(stage)
            self.unets[k].load_state_dict(donor.unets[k].state_dict())
            if not isinstance(self.text_encoders[k], PretrainedTextEncoder):
                self.text_encoders[k].load_state_dict(donor.text_encoders[k].state_dict())

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        stage = int(optimizer_name.removeprefix("stage"))
        pixels, texts = batch["pixel_values"], batch["text"]
        if stage > 0 and self.config.sr_batch_size:
            pixels, texts = pixels[:self.config.sr_batch_size], texts[:self.config.sr_batch_size]
        size = self.config.resolutions[stage]
        # Area down-sampling of the 64 px render is the anti-aliased image at this stage's size.
        x0 = F.interpolate(pixels, size=(size, size), mode="area") if size != pixels.shape[-1] else pixels
        b = x0.shape[0]
        drop = torch.rand(b) < self.config.condition_dropout
        states, mask = self.encode_text(stage, ["" if d else t for d, t in zip(drop.tolist(), texts)])
        if stage == 0:
            fn = lambda x, t: self.denoise(0, x, t, states, mask)  # noqa: E731
        else:
            low_size = self.config.resolutions[stage - 1]
            low = F.interpolate(pixels, size=(low_size, low_size), mode="area")
            level = torch.rand(b, device=x0.device) * self.config.max_train_aug_level
            low_res = self.low_res_condition(stage, low, level, torch.randn_like(low))
            aug_t = self.aug_timestep(level) if self.config.noise_augmentation else torch.zeros(b, dtype=torch.long, device=x0.device)
            if self.config.sr_crop is not None and self.config.sr_crop < size:
                x0, low_res = _random_crops(self.config.sr_crop, x0, low_res)
            fn = lambda x, t: self.denoise(stage, x, t, states, mask, low_res, aug_t)  # noqa: E731
        loss, mse = denoising_loss(self.noise_scheduler, fn, x0, self.config.prediction_type, self.config.min_snr_gamma,
                                   learned_variance=self.config.variance_type == "learned_range")
        return {"loss": loss, "mse": mse}

    # --- sampling ---------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts, seed: int = 0, init_image=None, progress: bool = False, **options):
        """Images from the last stage (or from the first `stages` stages), one per prompt. `options`: those of
        `generate_options` (trilemma.diffusion.options.IMAGEN).

        `init_image` (one, or one per prompt) with `strength` in (0, 1] (default 0.6): image-to-image (SDEdit) in
        the base stage, from the image at the base's side; the SR stages then enlarge the result as usual.

        `threshold_max_value` caps dynamic thresholding's s in every stage (inf: uncapped, as in Imagen's
        pseudocode); unset, each stage takes its config's cap. `clip_guidance` > 0 steers the base stage with a
        noise-aware CLIP (GLIDE): `guidance_clip` names it (a shipped one, or a folder; by default
        the shipped one trained on this cascade's base resolution and schedule).
        """
        options = self.parse_options(**options)
        edit = init_edit(init_image, options.strength, len(check_prompts(prompts)), self.resolution)
        return to_pil(self.sample_tensors(prompts, seed, options, progress=progress, edit=edit))

    @torch.no_grad()
    def inpaint(self, prompts, image, mask, seed: int = 0, steps: int | None = None, guidance_scale: float | None = None,
                sampler: str | None = None, negative_prompt: str = "", batch_size: int = 64, progress: bool = False,
                method: str | None = None, resample: int = 1):
        """Redraw the white region of `mask` in `image` to match each prompt, RePaint's way (training-free): at every
        stage the region outside the mask is the input at that stage's side, noised to each step's level. `image`
        and `mask` may be lists, one per prompt."""
        inpainting_method(self, method, sampler, resample)
        options = self.parse_options(steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                                     negative_prompt=negative_prompt, batch_size=batch_size)
        return to_pil(self.sample_tensors(prompts, seed, options, progress=progress,
                                          edit=inpaint_edit(image, mask, resample, len(check_prompts(prompts)),
                                                            self.resolution)))

    inpainting_methods = ("repaint",)
    default_inpainting = "repaint"

    def _stage_edit(self, stage: int, edit: dict | None, size: int) -> dict:
        """The edit's arguments to `sample` at one stage: SDEdit in the base only, RePaint at every stage."""
        return stage_edit(stage, edit, size, next(self.unets[stage].parameters()).device)

    @torch.no_grad()
    def sample_tensors(self, prompts, seed: int = 0, options: GenerateOptions | None = None, progress: bool = False,
                       edit: dict | None = None, inputs: dict | None = None, **given) -> torch.Tensor:
        """`generate`'s images as one (B, 3, H, W) tensor, before the final clip to [-1, 1] (to see overshoot).
        `options`: parsed by `parse_options`, or left None and given here as keywords. `inputs`: a subclass's inputs
        to `_cascade` (unCLIP's image embeddings), per-prompt tensors cut into batches with their prompts."""
        prompts = check_prompts(prompts)
        if options is None:
            options = self.parse_options(**given)
        elif given:
            raise TypeError(f"sample_tensors takes the options parsed or as keywords, not both ({', '.join(given)})")
        config = self.config
        guidance_scale = config.guidance_scale if options.guidance_scale is None else options.guidance_scale
        # The model's defaults where the call left an option unset: from here on the options object holds what runs.
        max_values = self._threshold_caps(options.threshold_max_value)
        options = options.replace(
            steps=config.sampling_steps if options.steps is None else options.steps,
            sr_steps=config.sr_sampling_steps if options.sr_steps is None else options.sr_steps,
            guidance_scale=guidance_scale,
            sr_guidance_scale=options.sr_guidance_scale if options.sr_guidance_scale is not None else (
                config.sr_guidance_scale if config.sr_guidance_scale is not None else guidance_scale),
            sampler=config.sampler if options.sampler is None else options.sampler,
            thresholding=config.thresholding if options.thresholding is None else options.thresholding,
            aug_level=config.sampling_aug_level if options.aug_level is None else options.aug_level,
            stages=len(config.resolutions) if options.stages is None else options.stages,
            threshold_percentile=config.threshold_percentile if options.threshold_percentile is None
            else options.threshold_percentile)
        classifier = None
        if getattr(options, "clip_guidance", None):  # (unCLIP declares none: its prior steers by CLIP)
            classifier = load_noise_aware_clip(options.guidance_clip, config.resolutions[0])
            classifier.check_schedule(self.noise_scheduler.config)
            classifier.to(next(self.unets[0].parameters()).device)
        if options.steps < 1 or options.sr_steps < 1:
            raise ValueError("steps must be at least 1")
        if not 0.0 <= options.aug_level <= 1.0:
            raise ValueError(f"the noise augmentation level must lie in [0, 1], not {options.aug_level}")
        if not 1 <= options.stages <= len(config.resolutions):
            raise ValueError(f"stages must be between 1 and {len(config.resolutions)}")
        seeds = image_seeds(seed, len(prompts))
        batch_size = options.batch_size
        chunks = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            # Per-prompt tensors among a subclass's inputs (unCLIP's embeddings) go with their prompts.
            per_chunk = {k: v[start:start + batch_size] if torch.is_tensor(v) else v for k, v in (inputs or {}).items()}
            chunks.append(self._cascade(chunk, seeds[start:start + len(chunk)], options, max_values, progress=progress,
                                        classifier=classifier, edit=edit_rows(edit, start, len(chunk), len(prompts)),
                                        **per_chunk))
        return torch.cat(chunks)

    def _threshold_caps(self, override: float | None) -> list[float]:
        """Dynamic thresholding's cap on s for each stage: the override everywhere, or each stage's config."""
        if override is not None:
            return [float(override)] * len(self.config.resolutions)
        caps = [self.config.threshold_max_value] + [self.config.sr_threshold_max_value] * n_sr(self.config)
        return [UNCAPPED if c is None else float(c) for c in caps]

    def _cascade(self, prompts, seeds, options: GenerateOptions, max_values: list[float], progress: bool = False,
                 classifier=None, image=None, start=0, edit=None) -> torch.Tensor:
        """Stages `start` to `options.stages` - 1, with the options `sample_tensors` resolved (every default filled
        in) and dynamic thresholding's cap of each stage in `max_values`; from `start` > 0, `image` is the previous
        stage's output."""
        stages, negative_prompt = options.stages, options.negative_prompt
        for stage in range(start, stages):
            guidance_scale = options.guidance_scale if stage == 0 else options.sr_guidance_scale
            device = next(self.unets[stage].parameters()).device
            size = self.config.resolutions[stage]
            cond = self.encode_text(stage, prompts)
            uncond = self.encode_text(stage, [negative_prompt] * len(prompts)) if guidance_scale != 1.0 else None
            # Each stage draws its own noise; (seed, stage, purpose) -> one 63-bit seed, so no two collide.
            stage_seeds = [derive_seed(s, stage, 0) for s in seeds]
            guide = None
            if stage == 0:
                denoise = lambda x, t, st, m: self.denoise(0, x, t, st, m)  # noqa: E731
                if classifier is not None:  # GLIDE's CLIP guidance steers the base, which decides the layout
                    guide = noise_aware_clip_guide(classifier, prompts, options.clip_guidance)
            else:
                level = torch.full((len(prompts),), float(options.aug_level), device=device)
                low_res = self.low_res_condition(stage, image, level, seeded_noise(image.shape[1:], [derive_seed(s, stage, 1) for s in seeds], device))
                aug_t = self.aug_timestep(level) if self.config.noise_augmentation else torch.zeros(len(prompts), dtype=torch.long, device=device)
                denoise = lambda x, t, st, m, low_res=low_res, aug_t=aug_t, stage=stage: self.denoise(stage, x, t, st, m, low_res, aug_t)  # noqa: E731
            scheduler = make_sampler(options.sampler, self.noise_scheduler.config)
            denoiser = classifier_free_guidance(denoise, cond, uncond, guidance_scale)
            if guide is not None:
                denoiser = gradient_guidance(denoiser, guide, scheduler.alphas_cumprod, self.config.prediction_type)
            denoiser = thresholded(denoiser, scheduler.alphas_cumprod, self.config.prediction_type, options.thresholding,
                                   options.threshold_percentile, max_values[stage])
            image = sample(denoiser, (3, size, size), stage_seeds, scheduler, options.steps if stage == 0 else options.sr_steps, eta=options.eta,
                           progress=progress, device=device, **self._stage_edit(stage, edit, size))
            if stage < stages - 1:
                image = image.clamp(-1.0, 1.0)  # the next stage trained on images inside the data range
        return image


def n_sr(config: ImagenConfig) -> int:
    return len(config.resolutions) - 1


def _random_crops(size: int, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One random size x size window per sample, the same window in each of `images` (all of one shape)."""
    b, _, h, w = images[0].shape
    top = torch.randint(0, h - size + 1, (b,)).tolist()
    left = torch.randint(0, w - size + 1, (b,)).tolist()
    return tuple(torch.stack([im[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(zip(top, left))]) for im in images)


def derive_seed(seed: int, stage: int, purpose: int) -> int:
    """One 63-bit seed per (image seed, stage, purpose): SeedSequence hashes the triple, so the streams that a
    cascade (and UnCLIP's prior) draw never collide, as seed + k would between neighbouring images."""
    return int(np.random.SeedSequence([seed, stage, purpose]).generate_state(1, np.uint64)[0] >> 1)
