"""Text-conditional latent diffusion (Rombach et al., 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models"), Stable Diffusion's recipe sized for a CPU.

A frozen KL autoencoder maps 64 px images to a small latent; a diffusers U-Net
with cross-attention on the text encoder's token states learns to denoise
those latents. Training uses v-prediction (Salimans & Ho, 2022) on a cosine
schedule, min-SNR loss weighting (Hang et al., 2023) and condition dropout
for classifier-free guidance (Ho & Salimans, 2022). Sampling uses diffusers'
schedulers in the explicit loop of `trilemma.diffusion.sampling`.

Stable Diffusion 3's two changes are options of the same model: `prediction_type: "flow"` trains rectified flow
(`objective.flow_matching_loss`, logit-normal timesteps) and samples with diffusers' flow schedulers, and
`backbone: "mmdit"` replaces the U-Net by the joint-attention transformer (`trilemma.diffusion.mmdit`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel

from trilemma.data.training import TrainingInputs, TrainingSet
from trilemma.autoencoders.kl import AutoencoderConfig, KLAutoencoder, frozen_autoencoder
from trilemma.clip import DEFAULT_CLIP, load_clip
from trilemma.diffusion.editing import covering_mask, edit_rows, images_and_masks, init_edit, inpainting_method
from trilemma.diffusion.denoiser import classifier_free_guidance
from trilemma.diffusion.guidance import decoded_clip_guide, gradient_guidance
from trilemma.diffusion.mmdit import build_mmdit, mmdit_forward
from trilemma.diffusion.objective import denoising_loss, flow_matching_loss
from trilemma.diffusion.sampling import make_sampler, repaint, sample, sdedit
from trilemma.diffusion.options import LATENT_DIFFUSION
from trilemma.model import TextToImageModel, TrainableModel, check_prompts, image_seeds, to_pil
from trilemma.progress import preview_decoder
from trilemma.text.pretrained import PretrainedTextEncoder, build_text_encoder
from trilemma.text.tokenizer import PromptTokenizer


@dataclass
class LatentDiffusionConfig:
    resolution: int = 64
    autoencoder: dict = field(default_factory=lambda: asdict(AutoencoderConfig()))
    latent_scale: float = 1.0  # SD's scaling factor: 1 / std of the training latents, set when training starts
    unet_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_encoder: dict = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 2, "num_heads": 4})
    tokenizer: dict = field(default_factory=lambda: PromptTokenizer().to_config())
    # epsilon failed here at the terminal step (zero terminal SNR; the shapes-ldm card); "flow": rectified flow (SD3)
    prediction_type: str = "v_prediction"
    # The denoising network: "unet" (Stable Diffusion's, cross-attention on the text) or "mmdit" (SD3's joint
    # attention over text and latent tokens), sized by `transformer` (trilemma.diffusion.mmdit.MMDiTConfig).
    backbone: str = "unet"
    transformer: dict = field(default_factory=dict)
    # Rectified flow: SD3's logit-normal timestep density (mean, std) and the schedule's shift (SD3: 3.0 at 1024 px,
    # where more pixels keep more signal at a given noise level; 1.0 suits 8 x 8 latents).
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float = 1.0
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    condition_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    # CoordConv (Liu et al., 2018): two channels holding x and y in [-1, 1] are
    # appended to the U-Net's input. Convolutions and diffusers' attention blocks
    # carry no absolute position, so without them "left" and "above" can only be
    # read off the zero padding at the borders.
    coord_channels: bool = False
    # Whether the U-Net's cross-attention skips the prompt's padding tokens. Stable Diffusion's does not (it
    # attends to all 77 positions) and diffusers' pipelines pass no mask, so a model meant to export to
    # StableDiffusionPipeline (`trilemma export`) is trained with False; masking changed 8 shapes-ldm-f8
    # images by 0.1-14.6 of 255 per pixel, so the two are not interchangeable at sampling time.
    cross_attention_mask: bool = True
    sampler: str = "dpmsolver++"
    sampling_steps: int = 25
    guidance_scale: float = 3.0


PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")
BACKBONES = ("unet", "mmdit")


class LatentDiffusion(TextToImageModel):
    family = "diffusion"
    config_class = LatentDiffusionConfig
    init_keys = ("autoencoder", "model")  # the trained first stage, or a whole model to fine-tune
    generate_options = LATENT_DIFFUSION

    def __init__(self, config: LatentDiffusionConfig):
        super().__init__()
        self.config = config
        self.resolution = config.resolution
        self.tokenizer = PromptTokenizer.from_config(config.tokenizer)
        # A frozen pretrained encoder (Imagen) brings its own tokenizer; otherwise a trainable transformer.
        self.text_encoder, self.tokenize, config.text_encoder = build_text_encoder(config.text_encoder, self.tokenizer)
        self._set_autoencoder(KLAutoencoder.from_config(config.autoencoder))
        ae = self.autoencoder.config
        if config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"model: prediction_type {config.prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
        if config.backbone not in BACKBONES:
            raise ValueError(f"model: backbone {config.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if config.backbone == "mmdit":
            if config.coord_channels:
                raise ValueError("model: coord_channels is for the U-Net; the MMDiT adds positional embeddings itself")
            self.transformer = build_mmdit(config.transformer, ae.latent_channels, self.latent_size,
                                           ae.latent_channels + self.extra_input_channels(), self.text_encoder.hidden_size)
        else:
            self._build_unet(config, ae)
        if config.prediction_type == "flow":
            self.noise_scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps,
                                                                   shift=config.flow_shift)
        else:
            self.noise_scheduler = DDPMScheduler(
                num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                prediction_type=config.prediction_type, clip_sample=False,
            )

    def _build_unet(self, config: LatentDiffusionConfig, ae) -> None:
        n = len(config.unet_channels)
        self.unet = UNet2DConditionModel(
            sample_size=self.latent_size, in_channels=ae.latent_channels + 2 * config.coord_channels + self.extra_input_channels(),
            out_channels=ae.latent_channels,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            block_out_channels=tuple(config.unet_channels), layers_per_block=config.layers_per_block,
            cross_attention_dim=self.text_encoder.hidden_size, attention_head_dim=config.attention_head_dim,
            norm_num_groups=min(16, config.unet_channels[0]),
        )

    @property
    def network(self):
        """The denoising backbone: the U-Net or the MMDiT."""
        return self.transformer if self.config.backbone == "mmdit" else self.unet

    def extra_input_channels(self) -> int:
        """Input channels beside the noisy latent and the coordinates (an inpainting model's conditioning)."""
        return 0

    def _set_autoencoder(self, autoencoder: KLAutoencoder) -> None:
        self.autoencoder = autoencoder.requires_grad_(False)  # the first stage is trained on its own, then frozen
        self.config.autoencoder = autoencoder.to_config()
        self.latent_channels = autoencoder.config.latent_channels
        self.latent_size = self.config.resolution // autoencoder.config.downsample

    def core_networks(self):
        return [self.network]

    # --- config ---------------------------------------------------------------
    def external_prefixes(self) -> tuple[str, ...]:
        return ("text_encoder.",) if isinstance(self.text_encoder, PretrainedTextEncoder) else ()

    # --- training -------------------------------------------------------------
    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0):
        params = [p for p in list(self.network.parameters()) + list(self.text_encoder.parameters()) if p.requires_grad]
        return {"model": torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)}

    def init_training(self, init: dict, device) -> None:
        """Start from the trained autoencoder (init.autoencoder), or from a whole trained model to fine-tune
        (init.model)."""
        self.fine_tuning = bool(init.get("model"))
        if self.fine_tuning:
            self.init_from(init["model"])
        else:
            self._set_autoencoder(frozen_autoencoder(self.autoencoder, init.get("autoencoder"), "U-Net"))
        self.autoencoder.to(device).eval()

    def training_inputs(self) -> TrainingInputs:
        """The autoencoder's latents, encoded once; their scale measured, unless fine-tuning: the donor's scale
        stays (its U-Net learnt latents at that scale), not this data's."""
        return TrainingInputs(self.resolution, "latents", self.autoencoder, latent_scale=not getattr(self, "fine_tuning", False))

    def fit_data(self, training: TrainingSet) -> None:
        if training.latent_scale is not None:
            self.config.latent_scale = training.latent_scale

    def init_from(self, source: str) -> None:
        """Start from a trained latent diffusion model (fine-tuning): its U-Net, text encoder, tokenizer,
        autoencoder and latent scale. The U-Net's input may grow (an inpainting model's extra channels,
        `trilemma.diffusion.inpainting`); its other shapes must match this recipe's."""
        donor = TrainableModel.from_pretrained(source)
        if not isinstance(donor, LatentDiffusion):
            raise ValueError(f"init.model {source} holds a {type(donor).__name__}, not a latent diffusion model")
        # What no weight shape shows but the function depends on (cross_attention_mask may change: that is a fine-tune).
        for key in ("prediction_type", "beta_schedule", "num_train_timesteps", "attention_head_dim", "coord_channels",
                    "backbone", "flow_shift"):
            if getattr(donor.config, key) != getattr(self.config, key):
                raise ValueError(f"init.model {source} has {key} {getattr(donor.config, key)!r}, this recipe "
                                 f"{getattr(self.config, key)!r}; copy the donor's value into the recipe")
        mine, theirs = self.network.state_dict(), donor.network.state_dict()
        # The input layer that grows with an inpainting model's channels: the U-Net's conv_in, the MMDiT's patch embedding.
        input_key = "pos_embed.proj.weight" if self.config.backbone == "mmdit" else "conv_in.weight"
        for key, value in theirs.items():
            if key == input_key and value.shape[1] < mine[key].shape[1]:
                if self.config.coord_channels:
                    raise ValueError("an inpainting model does not grow from a CoordConv donor (its coordinate "
                                     "channels come last); train one without coord_channels")
                # New input channels start at zero (SD-inpainting's recipe), so the fine-tune starts from the donor's function.
                grown = torch.zeros_like(mine[key])
                grown[:, : value.shape[1]] = value
                theirs[key] = grown
            elif key not in mine or value.shape != mine[key].shape:
                raise ValueError(f"init.model {source}: its {self.config.backbone}'s {key} is {tuple(value.shape)}, this recipe's is "
                                 f"{tuple(mine[key].shape) if key in mine else 'absent'}; copy its 'model' config")
        self.network.load_state_dict(theirs)
        self.tokenizer = donor.tokenizer
        self.config.tokenizer = donor.config.tokenizer
        self.text_encoder, self.tokenize, self.config.text_encoder = donor.text_encoder, donor.tokenize, donor.config.text_encoder
        self._set_autoencoder(donor.autoencoder)
        self.config.latent_scale = donor.config.latent_scale

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.network.parameters()).device
        ids, mask = self.tokenize(prompts)
        states, _ = self.text_encoder(ids.to(device), mask.to(device))
        return states, mask.to(device)

    def denoise(self, x: torch.Tensor, t, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The backbone's output (v, epsilon or the flow's velocity) for noisy latents x at timestep t."""
        if self.config.backbone == "mmdit":
            return mmdit_forward(self.transformer, x, t, states, mask)
        if self.config.coord_channels:
            ramp = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device, dtype=x.dtype)
            ys, xs = torch.meshgrid(ramp, ramp, indexing="ij")
            x = torch.cat([x, torch.stack([xs, ys]).expand(x.shape[0], -1, -1, -1)], dim=1)
        return self.unet(x, t, encoder_hidden_states=states,
                         encoder_attention_mask=mask if self.config.cross_attention_mask else None).sample

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        if "latents" in batch:
            latents = batch["latents"]
        else:
            with torch.no_grad():
                latents = self.autoencoder.encode(batch["pixel_values"])
        latents = latents * self.config.latent_scale
        b = latents.shape[0]
        # Condition dropout: the same network learns the unconditional model for guidance.
        drop = torch.rand(b) < self.config.condition_dropout
        texts = ["" if d else t for d, t in zip(drop.tolist(), batch["text"])]
        states, mask = self.encode_text(texts)
        network = lambda x, t: self.denoise(x, t, states, mask)  # noqa: E731
        if self.config.prediction_type == "flow":
            loss, mse = flow_matching_loss(network, latents, self.config.logit_mean, self.config.logit_std,
                                           self.config.flow_shift, self.config.num_train_timesteps)
        else:
            loss, mse = denoising_loss(self.noise_scheduler, network, latents, self.config.prediction_type,
                                       self.config.min_snr_gamma)
        return {"loss": loss, "mse": mse}

    # --- sampling -------------------------------------------------------------
    def make_sampler(self, name: str):
        return make_sampler(name, self.noise_scheduler.config)

    @torch.no_grad()
    def generate(self, prompts, seed: int = 0, init_image=None, progress: bool = False, **options):
        """One image per prompt; `options`: those of `generate_options` (trilemma.diffusion.options.LATENT_DIFFUSION).
        `clip_guidance` > 0 steers the sampler with CLIP read on the decoded prediction of the
        clean image (`trilemma.diffusion.guidance.decoded_clip_guide`); `guidance_clip` names the CLIP (default shapes-clip).
        `init_image` (a PIL image, or one per prompt) with `strength` in (0, 1]: image-to-image (SDEdit): the image's
        latent noised to that fraction of the schedule, then denoised under the prompt (default strength 0.6)."""
        prompts = check_prompts(prompts)
        options = self.parse_options(**options)
        edit = init_edit(init_image, options.strength, len(prompts), self.resolution)
        clip = None
        if options.clip_guidance:
            if self.config.prediction_type == "flow":
                raise ValueError("clip_guidance is written for noise schedules (epsilon, v); this model is trained with "
                                 "rectified flow: leave clip_guidance unset")
            clip = load_clip(options.guidance_clip or DEFAULT_CLIP).to(next(self.network.parameters()).device)
        if edit:  # SDEdit starts from the image's latent
            device = next(self.network.parameters()).device
            edit = {"init": self.autoencoder.encode(edit["init"].to(device)) * self.config.latent_scale,
                    "strength": edit["strength"]}
        return self._generate_all(prompts, seed, options.steps, options.guidance_scale, options.sampler,
                                  options.negative_prompt, options.batch_size, progress, eta=options.eta, clip=clip,
                                  clip_guidance=options.clip_guidance or 0.0, **(edit or {}))

    @torch.no_grad()
    def inpaint(self, prompts, image, mask, seed: int = 0, steps: int | None = None, guidance_scale: float | None = None,
                sampler: str | None = None, negative_prompt: str = "", batch_size: int = 64, progress: bool = False,
                method: str | None = None, resample: int = 1):
        """Redraw the white region of `mask` in `image` to match each prompt (text-guided inpainting). A plain text-to-image
        model does it training-free, RePaint's way (`method="repaint"`, `trilemma.diffusion.sampling`): in latent
        space, every latent cell under the mask is drawn and the others are kept. `resample` > 1 is RePaint's
        resampling (with the ddpm or ddim sampler). Outside the mask the decoded image is close to, not equal to, the
        input (the autoencoder's reconstruction): paste the original back where it must be exact. `image` and `mask`
        may be lists, one per prompt (different edits in one batch)."""
        prompts = check_prompts(prompts)
        options = self.parse_options(steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                                     negative_prompt=negative_prompt, batch_size=batch_size)
        steps, guidance_scale, batch_size = options.steps, options.guidance_scale, options.batch_size
        method = inpainting_method(self, method, sampler, resample)
        device = next(self.network.parameters()).device
        x, m = images_and_masks(image, mask, len(prompts), self.resolution)
        x, m = x.to(device), m.to(device)
        return self._inpaint(prompts, x, m, method, seed, steps, guidance_scale, sampler, negative_prompt, batch_size,
                             progress, resample)

    inpainting_methods = ("repaint",)
    default_inpainting = "repaint"

    def _inpaint(self, prompts, x, m, method, seed, steps, guidance_scale, sampler, negative_prompt, batch_size, progress,
                 resample):
        z0 = self.autoencoder.encode(x) * self.config.latent_scale
        keep = 1.0 - covering_mask(m, self.latent_size)
        return self._generate_all(prompts, seed, steps, guidance_scale, sampler, negative_prompt, batch_size, progress,
                                  known=(z0, keep), resample=resample)

    def _generate_all(self, prompts, seed, steps, guidance_scale, sampler, negative_prompt, batch_size, progress, **edit):
        """Sample in batches; `edit` holds per-batch-broadcast edit inputs (init, known, cond) and their options."""
        steps = self.config.sampling_steps if steps is None else steps
        if steps < 1:
            raise ValueError("steps must be at least 1")
        seeds = image_seeds(seed, len(prompts))
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            sliced = edit_rows(edit, start, len(chunk), len(prompts))
            images += self._generate_batch(chunk, seeds[start:start + len(chunk)], steps,
                                           self.config.guidance_scale if guidance_scale is None else guidance_scale,
                                           self.config.sampler if sampler is None else sampler, negative_prompt,
                                           progress, **sliced)
        return images

    def _generate_batch(self, prompts, seeds, steps, guidance_scale, sampler_name, negative_prompt, progress, eta=0.0,
                        clip=None, clip_guidance=0.0, init=None, strength=1.0, known=None, resample=1, cond=None):
        device = next(self.network.parameters()).device
        uncond = self.encode_text([negative_prompt] * len(prompts)) if guidance_scale != 1.0 else None
        guide = None
        if clip is not None:
            guide = decoded_clip_guide(clip, lambda z: self.autoencoder.decode(z / self.config.latent_scale), prompts, clip_guidance)
        denoise = self.denoise
        if cond is not None:  # an inpainting model's extra input channels (mask, masked image latents), per image
            def conditioned(x, t, states, mask):
                extra = cond if x.shape[0] == cond.shape[0] else torch.cat([cond] * (x.shape[0] // cond.shape[0]))
                return self.denoise(torch.cat([x, extra.to(x.dtype)], dim=1), t, states, mask)

            denoise = conditioned
        scheduler = self.make_sampler(sampler_name)
        denoiser = classifier_free_guidance(denoise, self.encode_text(prompts), uncond, guidance_scale)
        if guide is not None:
            denoiser = gradient_guidance(denoiser, guide, scheduler.alphas_cumprod, self.config.prediction_type)
        with preview_decoder(lambda z: self.autoencoder.decode(z / self.config.latent_scale)):
            latents = sample(denoiser, (self.latent_channels, self.latent_size, self.latent_size), seeds, scheduler, steps,
                             eta=eta, progress=progress, device=device,
                             start=sdedit(init, strength) if init is not None else None,
                             wrap_step=repaint(*known, resample) if known is not None else None)
        return to_pil(self.autoencoder.decode(latents / self.config.latent_scale))
