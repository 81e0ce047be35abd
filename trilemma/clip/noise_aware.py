"""A noise-aware CLIP image tower for CLIP guidance (GLIDE, Nichol et al., 2021, sec. 2.4 and 3.2).

CLIP guidance steers a diffusion sampler with the gradient of a CLIP similarity with respect to the
noisy image x_t. A CLIP trained on clean images says nothing useful about x_t early in sampling, so
GLIDE trains a "noised CLIP": its image tower reads x_t and the timestep t. Here the image tower is
transformers' CLIP vision transformer (`CLIPVisionModelWithProjection`, built from a `CLIPVisionConfig`)
with a timestep embedding added to every token (diffusers' sinusoidal `Timesteps` and
`TimestepEmbedding`: nothing of the kind exists in transformers' CLIP), trained contrastively on images
noised with the guided model's own noise schedule, at its base resolution.

Its text side is a frozen CLIP's text tower (``shapes-clip`` by default): the noised image tower learns
to land in that CLIP's joint space, so the prompts' embeddings are the CLIP's own. GLIDE trained both
towers from scratch on noised images; freezing the text tower trains half the network, on a CPU. The
CLIP's weights are not copied into this checkpoint: its config names the CLIP and its sha256, and
loading checks it (as the frozen text encoders do). The loss is CLIP's symmetric InfoNCE with the same
NegCLIP hard negatives on Shapes.

Any noise-aware classifier steers the same way (classifier guidance, Dhariwal & Nichol, 2021): the
sampler takes a gradient function, `trilemma.diffusion.guidance` builds one from this model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.checkpoint import file_sha256
from trilemma.clip import load_clip
from trilemma.clip.contrastive import contrastive_loss
from trilemma.model import TrainableModel
from trilemma.data.training import TrainingInputs


@dataclass
class NoiseAwareCLIPConfig:
    clip: str = "shapes-clip"  # the frozen CLIP whose text tower (and joint space) this image tower joins
    clip_sha256: str | None = None  # its weights' sha256, pinned when training starts
    resolution: int = 16  # the guided model's resolution (a cascade's base stage)
    patch_size: int = 2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    # The guided model's noise schedule (diffusers DDPMScheduler config): x_t must be noised as it noises them.
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    hard_negatives: bool | None = None  # None: on for Shapes data
    schedule: dict = field(default_factory=dict)  # extra DDPMScheduler arguments (beta_start, beta_end...)


class NoiseAwareCLIP(TrainableModel):
    family = "noised-clip"
    config_class = NoiseAwareCLIPConfig

    def __init__(self, config: NoiseAwareCLIPConfig):
        super().__init__()
        from diffusers import DDPMScheduler
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        self.config = config
        self.resolution = config.resolution
        if config.resolution % config.patch_size:
            raise ValueError(f"NoiseAwareCLIP: resolution {config.resolution} is not a multiple of patch_size {config.patch_size}")
        scorer = load_clip(config.clip)
        digest = file_sha256(scorer.folder / "model.safetensors")
        if config.clip_sha256 is not None and digest != config.clip_sha256:
            raise ValueError(f"the CLIP {config.clip} changed (sha256 {digest[:12]}..., this model was trained with "
                             f"{config.clip_sha256[:12]}...): its joint space is not the one this image tower learnt")
        config.clip_sha256 = digest
        self.text_clip = [scorer]  # in a list: a frozen, shared module that is neither a parameter nor saved
        dim = scorer.model.config.projection_dim
        self.vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
            image_size=config.resolution, patch_size=config.patch_size, hidden_size=config.hidden_size,
            intermediate_size=config.hidden_size * config.mlp_ratio, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, projection_dim=dim))
        self.time_proj = Timesteps(config.hidden_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(config.hidden_size, config.hidden_size)
        self.logit_scale = nn.Parameter(scorer.model.logit_scale.detach().clone().float())
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                                             **config.schedule)

    def check_schedule(self, scheduler_config) -> None:
        """Refuse to guide a model whose noise schedule differs from the one this tower learnt x_t under."""
        mine = self.noise_scheduler.config
        for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end"):
            if getattr(scheduler_config, key, None) != getattr(mine, key, None) and key in scheduler_config:
                raise ValueError(f"this noise-aware CLIP learnt the {key} {mine[key]!r}; the model's is "
                                 f"{scheduler_config[key]!r}: train one on that model's schedule")

    # --- the towers -----------------------------------------------------------------------
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.text_clip[0].to(self.logit_scale.device).embed_text(prompts)

    def embed_noisy_images(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of noisy images x_t (B, 3, R, R) at timesteps t (B,) or a scalar."""
        vm = self.vision.vision_model
        if x_t.shape[-1] != self.resolution or x_t.shape[-2] != self.resolution:
            raise ValueError(f"this noise-aware CLIP reads {self.resolution} px images, got {tuple(x_t.shape[-2:])}")
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(x_t.dtype))
        h = vm.embeddings(x_t) + temb[:, None, :]  # the timestep joins every token, the class token included
        h = vm.encoder(inputs_embeds=vm.pre_layrnorm(h)).last_hidden_state
        return F.normalize(self.vision.visual_projection(vm.post_layernorm(h[:, 0])), dim=-1)

    # --- training -----------------------------------------------------------------
    def training_inputs(self) -> TrainingInputs:
        """64 px images (the tower noises and resizes them to its resolution); hard negatives where the data
        makes them, unless the config says."""
        return TrainingInputs(64, hard_negatives=self.config.hard_negatives)

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        pixels = batch["pixel_values"]
        # Area down-sampling of the render is the anti-aliased image at this size, as the cascade's base trains on.
        x0 = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="area") \
            if pixels.shape[-1] != self.resolution else pixels
        b = x0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, torch.randn_like(x0), t)
        images = self.embed_noisy_images(x_t, t)
        texts = self.embed_text(batch["text"] + batch.get("negative_text", []))
        return contrastive_loss(images, texts, self.logit_scale)

    def preview(self, prompts, seed=0):
        return [], []
