"""DALL-E 2's unCLIP (Ramesh et al., 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents").

Generation in two steps through a frozen CLIP's joint space. A diffusion **prior** turns the caption's CLIP
text embedding (and its token states) into a CLIP image embedding; a diffusion **decoder** turns that image
embedding (and, optionally, the caption) into an image, which super-resolution stages enlarge. Because the
decoder inverts CLIP's image encoder, the same model draws variations of a given image (embed it, decode with
other seeds) and interpolates between images (slerp between their embeddings).

Parts, from the ecosystem where it has them:
- the prior is diffusers' `PriorTransformer` (the paper's decoder-only transformer over [caption token states,
  text embedding, timestep, noised image embedding, a final query token], causal mask), trained to predict
  the clean embedding itself (x0), as the paper found better than predicting the noise; conditions are dropped
  10% of the time for classifier-free guidance; the paper's option of drawing several embeddings and keeping
  the one nearest the text embedding is `prior_candidates`;
- the decoder is the cascade's base U-Net (`trilemma.diffusion.imagen`) with the paper's two additions to
  GLIDE: the image embedding projected and added to the timestep embedding (diffusers' `class_embed_type=
  "projection"`) and projected into `clip_context_tokens` extra tokens of the text context. Training drops the
  embedding 10% and the caption 50% of the time (the paper's rates), so guidance works on either;
- super-resolution is a shipped cascade's SR stage, frozen and loaded from it (`sr_from`, hash-checked): its
  weights stay out of this model's checkpoint, as the frozen CLIP's do.

Embeddings travel as unit vectors scaled by sqrt(D) (elements of unit variance), the convention of the
reference reproductions, and are renormalised after sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, PriorTransformer
from torch import nn

from trilemma.checkpoint import read_config
from trilemma.clip import pinned_clip
from trilemma.diffusion.editing import init_edit
from trilemma.diffusion.imagen import ImagenCascade, ImagenConfig, derive_seed
from trilemma.diffusion.objective import denoising_loss
from trilemma.diffusion.denoiser import classifier_free_guidance
from trilemma.diffusion.sampling import SAMPLERS, make_sampler, sample
from trilemma.diffusion.thresholding import thresholded
from trilemma.diffusion.options import UNCLIP
from trilemma.model import check_prompts, to_pil
from trilemma.options import CANDIDATES, GenerateOptions
from trilemma.registry import shipped_models

CONDITIONINGS = ("image", "text", "caption")  # what the decoder is given (the paper's ablation, Fig. 16)
PARTS = ("prior", "decoder")
PRIOR_STAGE = 101  # the prior's place in derive_seed's (seed, stage, purpose): apart from the cascade's stages


@dataclass
class UnCLIPConfig(ImagenConfig):
    clip: str = "shapes-clip"  # a shipped CLIP's name or a CLIP folder; frozen, referenced and hash-checked
    clip_sha256: str | None = None
    prior: dict = field(default_factory=lambda: {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32})
    prior_condition_dropout: float = 0.1
    prior_sampler: str = "ddim"
    prior_steps: int = 64  # the paper samples its diffusion prior with 64 strided steps
    prior_guidance_scale: float = 1.0
    prior_candidates: int = 1  # the paper's trick: draw this many embeddings, keep the nearest to the text
    clip_context_tokens: int = 4
    embedding_dropout: float = 0.1
    caption_dropout: float = 0.5
    conditioning: str = "image"
    # SR stages come frozen from this cascade (shipped name or folder); None only for a decoder without SR stages.
    sr_from: str | None = "shapes-imagen"
    sr_sha256: str | None = None
    train_parts: tuple[str, ...] = PARTS


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation between unit vectors (rows), as the paper interpolates image embeddings."""
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return torch.sin((1 - w) * omega) / so * a + torch.sin(w * omega) / so * b


class UnCLIP(ImagenCascade):
    family = "diffusion"
    config_class = UnCLIPConfig
    init_keys = ("decoder",)  # a cascade whose base the decoder starts from
    generate_options = UNCLIP

    def __init__(self, config: UnCLIPConfig):
        if config.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning {config.conditioning!r}: choose one of {', '.join(CONDITIONINGS)}")
        if not config.train_parts or any(p not in PARTS for p in config.train_parts):
            raise ValueError(f"train_parts {config.train_parts}: name some of {', '.join(PARTS)}")
        for name in ("prior_condition_dropout", "embedding_dropout", "caption_dropout"):
            if not 0.0 <= getattr(config, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), not {getattr(config, name)}")
        if not config.sr_from and len(config.resolutions) > 1:
            raise ValueError("unCLIP trains its prior and decoder only: give sr_from, a cascade whose SR stages it reuses "
                             "(shapes-imagen), or a single resolution (no SR)")
        if config.prior_sampler not in SAMPLERS:
            raise ValueError(f"prior_sampler {config.prior_sampler!r}: choose one of {', '.join(SAMPLERS)}")
        clip = pinned_clip(config)
        self._embed_dim = int(clip.model.config.projection_dim)  # before the U-Nets: the decoder's projection reads it
        super().__init__(config)
        self.clip = clip  # frozen and external: leaves checkpoints, found again by name or path and hash
        dim, text_hidden = self._embed_dim, int(clip.model.config.text_config.hidden_size)
        self.prior = PriorTransformer(embedding_dim=dim, num_embeddings=clip.max_length, additional_embeddings=4,
                                      **config.prior)
        self.prior.clip_mean.requires_grad_(False)  # diffusers' latent statistics: unused here (embeddings are scaled)
        self.prior.clip_std.requires_grad_(False)
        # PriorTransformer maps token states of the embedding's width; a CLIP whose text tower is wider gets a map.
        self.prior_text_proj = nn.Identity() if text_hidden == dim else nn.Linear(text_hidden, dim)
        self.prior_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                                             prediction_type="sample", clip_sample=False)
        cross = self.text_encoders[0].hidden_size
        self.clip_context = nn.Linear(dim, config.clip_context_tokens * cross)
        nn.init.normal_(self.clip_context.weight, std=0.02)
        nn.init.zeros_(self.clip_context.bias)
        # The added time embedding starts at zero, so a decoder initialised from a text-only base starts as that base.
        nn.init.zeros_(self.unets[0].class_embedding.linear_2.weight)
        nn.init.zeros_(self.unets[0].class_embedding.linear_2.bias)
        if config.sr_from:
            self._load_sr(config)

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self._embed_dim)

    def _unet_kwargs(self, stage: int) -> dict:
        kwargs = super()._unet_kwargs(stage)
        if stage == 0:
            kwargs.update(class_embed_type="projection", projection_class_embeddings_input_dim=self._embed_dim)
        return kwargs

    def _load_sr(self, config: UnCLIPConfig) -> None:
        source = config.sr_from
        folder, shipped = _cascade_folder(source, "sr_from")
        digest = read_config(folder).get("weights_sha256")
        if config.sr_sha256 is not None and digest != config.sr_sha256:
            raise ValueError(f"sr_from {source}: its weights (sha256 {digest}) differ from the {config.sr_sha256} this model "
                             "was built with; give the cascade it was built on")
        donor = ImagenCascade.from_pretrained(folder)
        for name in ("resolutions", "unet_channels", "layers_per_block", "attention_head_dim", "sr_attention_levels",
                     "sr_crop", "sr_self_attention", "tokenizer", "text_encoder", "prediction_type", "variance_type",
                     "beta_schedule", "num_train_timesteps", "noise_augmentation"):
            mine, theirs = getattr(config, name), getattr(donor.config, name)
            if _plain(mine) != _plain(theirs):
                raise ValueError(f"sr_from {source}: its {name} ({theirs}) differs from this model's ({mine}); "
                                 "copy the cascade's architecture into the recipe")
        for k in range(1, len(config.resolutions)):
            self.unets[k].load_state_dict(donor.unets[k].state_dict())
            self.text_encoders[k].load_state_dict(donor.text_encoders[k].state_dict())
            self.unets[k].requires_grad_(False)
            self.text_encoders[k].requires_grad_(False)
        config.sr_sha256 = digest
        config.sr_from = source if shipped else str(folder.resolve())

    def external_prefixes(self) -> tuple[str, ...]:
        sr = tuple(p for k in range(1, len(self.config.resolutions)) for p in (f"unets.{k}.", f"text_encoders.{k}.")) \
            if self.config.sr_from else ()
        return super().external_prefixes() + ("clip.",) + sr

    def core_networks(self):
        return [self.prior, *self.unets]

    def make_prior_sampler(self):
        """The prior's sampling scheduler (its recipe's sampler on the prior's training schedule)."""
        return make_sampler(self.config.prior_sampler, self.prior_scheduler.config)

    # --- the two steps ------------------------------------------------------------
    def prior_denoise(self, z_t, t, text_embedding, states, mask) -> torch.Tensor:
        """The prior's estimate of the clean (scaled) image embedding."""
        return self.prior(z_t, t, proj_embedding=text_embedding * self.embed_scale,
                          encoder_hidden_states=self.prior_text_proj(states), attention_mask=mask).predicted_image_embedding

    def decoder_condition(self, states, mask, embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's context: the caption's states followed by the embedding's extra tokens."""
        b = states.shape[0]
        extra = self.clip_context(embedding).view(b, self.config.clip_context_tokens, -1)
        return torch.cat([states, extra], 1), torch.cat([mask, torch.ones(b, extra.shape[1], dtype=mask.dtype, device=mask.device)], 1)

    # --- training -----------------------------------------------------------------
    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0):
        parts = {"prior": list(self.prior.parameters()) + list(self.prior_text_proj.parameters()),
                 "decoder": list(self.unets[0].parameters()) + list(self.text_encoders[0].parameters())
                 + list(self.clip_context.parameters())}
        return {name: torch.optim.AdamW([p for p in parts[name] if p.requires_grad], lr=learning_rate, weight_decay=weight_decay)
                for name in self.config.train_parts}

    def init_training(self, init: dict, device) -> None:
        # init.decoder: a cascade (shipped name or folder) whose base U-Net and text encoder the decoder starts
        # from, as the paper's decoder starts from GLIDE; the embedding's projections start as set in __init__.
        source = init.get("decoder")
        if source:
            donor = ImagenCascade.from_pretrained(_cascade_folder(source, "init.decoder")[0])
            missing, unexpected = self.unets[0].load_state_dict(donor.unets[0].state_dict(), strict=False)
            if unexpected or any(not k.startswith("class_embedding.") for k in missing):
                raise ValueError(f"init.decoder {source}: its base U-Net does not match this decoder's")
            self.text_encoders[0].load_state_dict(donor.text_encoders[0].state_dict())

    @torch.no_grad()
    def _clip_features(self, batch: dict) -> dict:
        """CLIP's embeddings of a batch, once for both optimizers' steps (the loop hands both the same batch)."""
        if "_unclip" not in batch:
            image = self.clip.embed_images(batch["pixel_values"])
            text, states, mask = self.clip.encode_text(batch["text"])
            null = self.clip.encode_text([""])
            batch["_unclip"] = {"image": image, "text": text, "states": states, "mask": mask, "null": null}
        return batch["_unclip"]

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        feats = self._clip_features(batch)
        image = feats["image"]
        b, device = image.shape[0], image.device
        if optimizer_name == "prior":
            drop = (torch.rand(b, device=device) < self.config.prior_condition_dropout)
            null_text, null_states, null_mask = feats["null"]
            text = torch.where(drop[:, None], null_text.expand(b, -1), feats["text"])
            states = torch.where(drop[:, None, None], null_states.expand(b, -1, -1), feats["states"])
            mask = torch.where(drop[:, None], null_mask.expand(b, -1), feats["mask"])
            x0 = image * self.embed_scale
            noise = torch.randn_like(x0)
            t = torch.randint(0, self.config.num_train_timesteps, (b,), device=device)
            pred = self.prior_denoise(self.prior_scheduler.add_noise(x0, noise, t), t, text, states, mask)
            loss = F.mse_loss(pred, x0)
            # How near the predicted embeddings are to the true ones (cosine): a figure a person can read.
            return {"loss": loss, "cosine": F.cosine_similarity(pred, x0, dim=-1).mean().detach()}
        size = self.config.resolutions[0]
        pixels = batch["pixel_values"]
        x0 = F.interpolate(pixels, size=(size, size), mode="area") if size != pixels.shape[-1] else pixels
        drop_caption = (torch.rand(b) < self.config.caption_dropout).tolist()
        keep = (torch.rand(b, device=device) >= self.config.embedding_dropout).float()[:, None]
        states, mask = self.encode_text(0, ["" if d else t for d, t in zip(drop_caption, batch["text"])])
        embedding = image * self.embed_scale * keep  # a dropped embedding is zero, as in the paper
        context, context_mask = self.decoder_condition(states, mask, embedding)
        fn = lambda x, t: self.unets[0](x, t, encoder_hidden_states=context, encoder_attention_mask=context_mask,  # noqa: E731
                                        class_labels=embedding).sample
        loss, mse = denoising_loss(self.noise_scheduler, fn, x0, self.config.prediction_type, self.config.min_snr_gamma,
                                   learned_variance=self.config.variance_type == "learned_range")
        return {"loss": loss, "mse": mse}

    # --- sampling -------------------------------------------------------------------
    @torch.no_grad()
    def prior_sample(self, prompts: list[str], seeds: list[int], guidance_scale: float | None = None,
                     steps: int | None = None, candidates: int | None = None) -> torch.Tensor:
        """Unit CLIP image embeddings (B, D) for the prompts: the prior's, the nearest of `candidates` to the text."""
        guidance_scale = self.config.prior_guidance_scale if guidance_scale is None else guidance_scale
        steps = self.config.prior_steps if steps is None else steps
        candidates = self.config.prior_candidates if candidates is None else candidates
        text, states, mask = self.clip.encode_text(prompts)
        null_text, null_states, null_mask = self.clip.encode_text([""] * len(prompts))
        both = torch.cat([null_text, text])
        network = lambda z, t, st, m: self.prior_denoise(z, t, both if z.shape[0] != len(prompts) else text, st, m)  # noqa: E731
        denoiser = classifier_free_guidance(network, (states, mask), (null_states, null_mask), guidance_scale)
        best, best_sim = None, None
        for j in range(candidates):
            z = sample(denoiser, (self._embed_dim,), [derive_seed(s, PRIOR_STAGE, j) for s in seeds],
                       self.make_prior_sampler(), steps, device=text.device)
            z = F.normalize(z, dim=-1)
            sim = (z * text).sum(-1)
            if best is None:
                best, best_sim = z, sim
            else:
                better = sim > best_sim
                best, best_sim = torch.where(better[:, None], z, best), torch.maximum(sim, best_sim)
        return best

    def generate(self, prompts, seed: int = 0, init_image=None, progress: bool = False, **options):
        """Images, one per prompt: the prior's image embedding (or, by `conditioning`, the CLIP text embedding, or
        none) and the caption, decoded and enlarged. `guidance_scale` guides the decoder, `prior_guidance_scale` the prior.
        `init_image` and `strength`: image-to-image (SDEdit) in the decoder, as in `ImagenCascade.generate`.
        `options`: those of `generate_options` (trilemma.diffusion.options.UNCLIP)."""
        return super().generate(prompts, seed, init_image=init_image, progress=progress, **options)

    def _cascade(self, prompts, seeds, options: GenerateOptions, max_values: list[float], progress: bool = False,
                 classifier=None, image=None, start=0, edit=None, embeddings=None, use_caption=True) -> torch.Tensor:
        """The decoder's first stage from the prior's embedding (or `embeddings`, given: variations), then the SR
        stages as in a cascade."""
        conditioning = options.conditioning or self.config.conditioning
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, not {conditioning!r}")
        device = next(self.unets[0].parameters()).device
        if embeddings is None and conditioning == "image":
            embeddings = self.prior_sample(prompts, seeds, options.prior_guidance_scale, options.prior_steps,
                                           options.prior_candidates)
        elif embeddings is None and conditioning == "text":
            embeddings = self.clip.encode_text(prompts)[0]
        captions = list(prompts) if use_caption else [""] * len(prompts)
        b = len(prompts)
        embedding = (embeddings.to(device) * self.embed_scale) if embeddings is not None \
            else torch.zeros(b, self._embed_dim, device=device)
        cond = self.decoder_condition(*self.encode_text(0, captions), embedding)
        zero = torch.zeros_like(embedding)
        uncond = self.decoder_condition(*self.encode_text(0, [options.negative_prompt] * b), zero)
        both = torch.cat([zero, embedding])
        denoise = lambda x, t, st, m: self.unets[0](x, t, encoder_hidden_states=st, encoder_attention_mask=m,  # noqa: E731
                                                    class_labels=both if x.shape[0] != b else embedding).sample
        size = self.config.resolutions[0]
        scheduler = make_sampler(options.sampler, self.noise_scheduler.config)
        denoiser = thresholded(classifier_free_guidance(denoise, cond, uncond, options.guidance_scale),
                               scheduler.alphas_cumprod, self.config.prediction_type, options.thresholding,
                               options.threshold_percentile, max_values[0])
        image = sample(denoiser, (3, size, size), [derive_seed(s, 0, 0) for s in seeds], scheduler, options.steps,
                       eta=options.eta, progress=progress, device=device, **self._stage_edit(0, edit, size))
        if options.stages == 1:
            return image
        return super()._cascade(captions, seeds, options, max_values, progress=progress, image=image.clamp(-1.0, 1.0),
                                start=1, edit=edit)

    # --- variations and interpolation -----------------------------------------------------
    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """Unit CLIP image embeddings of PIL images (resized to CLIP's input by its processor's rule)."""
        return self.clip.embed_images(images)

    @torch.no_grad()
    def vary(self, images, n: int = 4, seed: int = 0, caption: str | None = None, **options):
        """`n` variations of each image: its CLIP image embedding decoded with seeds seed, seed + 1, ... (and the
        caption, if given). Returns a list of lists of PIL images, one list per input image."""
        n = CANDIDATES.check(n)  # the same cap as any count of images drawn per input
        embeddings = self.embed_images(images).repeat_interleave(n, dim=0)
        prompts = [caption or "an image variation"] * len(embeddings)  # a placeholder unless a caption is given
        flat = to_pil(self.sample_tensors(prompts, seed, inputs={"embeddings": embeddings, "use_caption": bool(caption)},
                                          **options))
        return [flat[k * n:(k + 1) * n] for k in range(len(images))]

    @torch.no_grad()
    def interpolate_images(self, image_a, image_b, steps: int = 8, seed: int = 0, **options):
        """`steps` images along the slerp from A's image embedding to B's, all decoded with one seed, so only the
        embedding moves (the paper's Figure 4)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= 64:
            raise ValueError(f"steps must be a whole number between 2 and 64, got {steps!r}")
        a, b = self.embed_images([image_a, image_b])
        path = torch.stack([slerp(a[None], b[None], w)[0] for w in torch.linspace(0, 1, steps).tolist()])
        images = []
        for k, e in enumerate(path):  # one seed for every point: sample_tensors would give image k seed + k
            images += to_pil(self.sample_tensors(["an image interpolation"], seed,
                                                 inputs={"embeddings": e[None], "use_caption": False}, **options))
        return images


def _cascade_folder(source: str, what: str) -> tuple[Path, bool]:
    """(folder, whether shipped) of a cascade named by a shipped model's name or a folder; one line if neither."""
    if source in shipped_models():
        return shipped_models()[source], True
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"{what} {source!r}: no cascade there; give a shipped cascade's name (shapes-imagen) or its folder")
    return folder, False


def _plain(value):
    """Tuples and lists alike, for comparing configs read from JSON with dataclass defaults."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
