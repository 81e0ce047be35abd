"""GALIP (Tao et al., CVPR 2023, "GALIP: Generative Adversarial CLIPs for Text-to-Image Synthesis").

Written by hand after the paper and its code (tobran/GALIP): no maintained library ships it. It is DF-GAN
(`trilemma.gan.dfgan`, whose fusion blocks, noise and interpolation it reuses) with a frozen CLIP inside
both networks:
- CLIP-based discriminator: the frozen CLIP-ViT reads the image; the patch tokens of several of its layers
  (the code's blocks 1, 4 and 8 of 12; spread the same way over a shorter ViT) feed the learnable Mate-D,
  a stack of residual blocks that each add the next layer's features (x + gamma * residual + beta * CLIP
  feature). Its one-way output tiles the CLIP sentence embedding over the map and convolves the pair down to
  one logit. Hinge loss with mismatched pairs as a third kind of fake; MA-GP (k = 2, p = 6) is taken on the
  real image's CLIP features and the sentence embedding, not on the pixels.
- CLIP-empowered generator: the learnable Mate-G maps z to a small map (fc_code), fuses [z, sentence]
  into it with residual blocks of DF-GAN's deep fusion (M-blocks), and predicts the "bridge feature", a
  map as wide as the ViT. The bridge feature enters the frozen ViT as its patch embedding, with one
  text-conditioned prompt token appended at each of the middle blocks (the code's blocks 1 to 8 of 12);
  the ViT's output tokens, added to the bridge feature at 0.1, go on to the image decoder: DF-GAN's
  up-sampling blocks to pixels.
- The generator's loss adds the CLIP text-image similarity of its images (cosine of the frozen CLIP's
  image embedding with the sentence embedding), weight 4 in the paper.
- Adam (0.0, 0.9), generator 1e-4, discriminator 4e-4.

With `autoencoder` set, the image decoder stops at the latent grid and the frozen KL autoencoder's decoder
draws the pixels (the shipped DF-GAN's recipe; on this CPU DF-GAN's pixel decoder drew blobs). The
discriminator still reads pixels through CLIP, so the generator's gradient runs back through the frozen
decoder and the frozen ViT.

The CLIP is the project's `shapes-clip` by default, or any local transformers CLIP folder; like the frozen
text encoders, its weights stay out of the checkpoint, which names it and checks its sha256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.autoencoders.kl import KLAutoencoder, frozen_autoencoder
from trilemma.clip import pinned_clip
from trilemma.data.training import TrainingInputs, TrainingSet
from trilemma.gan.dfgan import DFGAN, DFBlock, DFGANConfig, block_channels, image_decoder
from trilemma.gan.dfgan import Discriminator as DFGANDiscriminator


@dataclass
class GALIPConfig:
    resolution: int = 64
    z_dim: int = 100
    ngf: int = 32  # image decoder width unit, as DF-GAN's
    code_channels: int = 64  # Mate-G's map from z (the code's 64 channels at 7x7)
    mid_channels: int = 32
    mate_g_blocks: int = 4  # M-blocks (the code's map_num)
    affine_hidden: int = 256
    ndf: int = 128  # width of Mate-D's last block (the code: 512 on a 768-wide ViT)
    clip: str = "shapes-clip"  # a shipped CLIP's name or a CLIP folder: frozen, referenced and hash-checked
    clip_sha256: str | None = None
    d_layers: list[int] | None = None  # ViT blocks whose outputs feed Mate-D (None: spread as the code's 1, 4, 8 of 12)
    prompt_layers: list[int] | None = None  # ViT blocks that get a prompt token in Mate-G (None: 1 .. 2/3 of the depth)
    bridge_scale: float = 0.1  # conv(bridge + 0.1 * ViT(bridge)), as in the code
    sim_weight: float = 4.0  # the CLIP similarity term in the generator's loss
    gp_k: float = 2.0
    gp_p: float = 6.0
    d_lr_ratio: float = 4.0
    truncation: float | None = None
    autoencoder: dict | None = None  # a KLAutoencoder config: generate its latents, decoded for CLIP (None: pixels)
    latent_scale: float = 1.0  # 1 / std of the training latents, set when training starts
    latent_blocks: int = 0  # DF-GAN generator blocks without resampling at the output grid
    hard_mismatch: bool = False  # half of the mismatched pairs are hard negatives (as the shipped DF-GAN)
    # Latent mode: show the discriminator the real images as the autoencoder reconstructs them, so that real and
    # fake both come through the decoder and the decoder's traces do not tell them apart. Off in the shipped
    # shapes-galip, which CLIP read raw real pixels and decoded fakes (its card).
    reals_through_autoencoder: bool = False

    grid = DFGANConfig.grid  # what the generator draws: the image, or the autoencoder's latent
    channels = DFGANConfig.channels


def default_d_layers(depth: int) -> list[int]:
    """The code takes blocks 1, 4 and 8 of 12: the same fractions of the way through a ViT of `depth` blocks."""
    return sorted({round(f * (depth - 1)) for f in (1 / 11, 4 / 11, 8 / 11)})


def default_prompt_layers(depth: int) -> list[int]:
    """The code prompts blocks 1 to 8 of 12: the first aside, to two thirds of the depth (a one-block ViT: its block)."""
    return list(range(1, (2 * depth) // 3 + 1)) or [depth - 1]


class FrozenViT:
    """The frozen CLIP's vision tower, run block by block: a plain object, not a module, so that the generator and
    discriminator that use it do not hold its weights (they live, frozen and external, in GALIP.clip)."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.vision = scorer.model.vision_model
        self.projection = scorer.model.visual_projection
        self.width = int(self.vision.config.hidden_size)
        self.depth = len(self.vision.encoder.layers)
        self.grid = int(self.vision.config.image_size) // int(self.vision.config.patch_size)

    def _tokens_to_map(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, 1:].transpose(1, 2).reshape(h.shape[0], self.width, self.grid, self.grid)

    def features(self, images: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> (patch-token maps of `layers` (B, len(layers), width, grid, grid), image embedding (B, D))."""
        h = self.vision.pre_layrnorm(self.vision.embeddings(self.scorer.pixel_values(images)))
        maps = []
        for i, layer in enumerate(self.vision.encoder.layers):
            h = _block(layer, h)
            if i in layers:
                maps.append(self._tokens_to_map(h))
        return torch.stack(maps, dim=1), self.projection(self.vision.post_layernorm(h[:, 0]))

    def map(self, bridge: torch.Tensor, prompts: torch.Tensor, prompt_layers: list[int]) -> torch.Tensor:
        """The code's CLIP_Mapper: the bridge feature (B, width, grid, grid) as the patch embedding, a prompt token
        (B, len(prompt_layers), width) appended for each prompted block and dropped after it."""
        emb = self.vision.embeddings
        tokens = bridge.flatten(2).transpose(1, 2)
        cls = emb.class_embedding.expand(tokens.shape[0], 1, -1)
        h = self.vision.pre_layrnorm(torch.cat([cls, tokens], dim=1) + emb.position_embedding.weight[None])
        for i, layer in enumerate(self.vision.encoder.layers):
            if i in prompt_layers:
                prompt = prompts[:, prompt_layers.index(i)][:, None]
                h = _block(layer, torch.cat([h, prompt], dim=1))[:, :-1]
            else:
                h = _block(layer, h)
        return self._tokens_to_map(h)


def _block(layer, h: torch.Tensor) -> torch.Tensor:
    out = layer(h, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


class MBlock(nn.Module):
    """Mate-G's M-block: conv, deep fusion, conv, deep fusion, with a residual shortcut."""

    def __init__(self, cond_dim: int, in_ch: int, mid_ch: int, out_ch: int, hidden: int):
        super().__init__()
        self.c1, self.fuse1 = nn.Conv2d(in_ch, mid_ch, 3, 1, 1), DFBlock(cond_dim, mid_ch, hidden)
        self.c2, self.fuse2 = nn.Conv2d(mid_ch, out_ch, 3, 1, 1), DFBlock(cond_dim, out_ch, hidden)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.fuse2(self.c2(self.fuse1(self.c1(x), cond)), cond)


class Generator(nn.Module):
    """Mate-G (z and text to the bridge feature, through the frozen ViT) and the image decoder."""

    def __init__(self, config: GALIPConfig, vit: FrozenViT, sentence_dim: int):
        super().__init__()
        self.config, self.vit = config, vit  # vit: frozen, not a submodule (see FrozenViT)
        self.prompt_layers = config.prompt_layers
        cond_dim = config.z_dim + sentence_dim
        g = vit.grid
        self.fc = nn.Linear(config.z_dim, config.code_channels * g * g)
        self.mate = nn.ModuleList([MBlock(cond_dim, config.code_channels, config.mid_channels, config.code_channels,
                                          config.affine_hidden) for _ in range(config.mate_g_blocks)])
        self.to_bridge = nn.Conv2d(config.code_channels, vit.width, 5, 1, 2)
        self.prompt = nn.Linear(cond_dim, vit.width * len(self.prompt_layers))
        levels = int(math.log2(config.grid // g))  # up-sampling blocks from the ViT's grid to the output's
        chs = block_channels(config.ngf, levels)
        self.from_bridge = nn.Conv2d(vit.width, chs[0], 5, 1, 2)
        self.blocks, self.to_rgb = image_decoder(config, cond_dim, chs)  # DF-GAN's, as the code's G_Blocks

    def forward(self, z: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([z, sentence], dim=1)
        g = self.vit.grid
        h = self.fc(z).view(z.shape[0], -1, g, g)
        for block in self.mate:
            h = block(h, cond)
        bridge = self.to_bridge(h)
        prompts = self.prompt(cond).view(z.shape[0], len(self.prompt_layers), -1)
        h = self.from_bridge(bridge + self.config.bridge_scale * self.vit.map(bridge, prompts, self.prompt_layers))
        for block in self.blocks:
            h = block(h, cond)
        return self.to_rgb(h)


class MateDBlock(nn.Module):
    """The code's D_Block: x + gamma * residual(x) (+ beta * the next CLIP layer's features); gamma and beta start at 0."""

    def __init__(self, in_ch: int, out_ch: int, clip_feature: bool):
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.LeakyReLU(0.2),
                                      nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.LeakyReLU(0.2))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1)) if clip_feature else None

    def forward(self, x: torch.Tensor, clip_feature: torch.Tensor | None = None) -> torch.Tensor:
        out = self.shortcut(x) + self.gamma * self.residual(x)
        return out + self.beta * clip_feature if self.beta is not None else out


class Discriminator(nn.Module):
    """Mate-D over the CLIP features (NetD), then the one-way conditional output (NetC)."""

    def __init__(self, config: GALIPConfig, width: int, grid: int, n_layers: int, sentence_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList([MateDBlock(width, width, clip_feature=True) for _ in range(n_layers - 1)])
        self.main = MateDBlock(width, config.ndf, clip_feature=False)
        # The code convolves a 7x7 map with two 4x4 kernels to one logit; here the second kernel covers what is left.
        self.joint = nn.Sequential(nn.Conv2d(config.ndf + sentence_dim, 128, 4, 1, 0, bias=False), nn.LeakyReLU(0.2),
                                   nn.Conv2d(128, 1, grid - 3, 1, 0, bias=False))

    def features(self, clip_maps: torch.Tensor) -> torch.Tensor:
        h = clip_maps[:, 0]
        for i, block in enumerate(self.blocks):
            h = block(h, clip_maps[:, i + 1])
        return self.main(h)

    logits = DFGANDiscriminator.logits  # the one-way output: the map with the tiled sentence, to one logit


class GALIP(DFGAN):
    config_class = GALIPConfig
    init_keys = ("autoencoder",)  # the latent mode's first stage

    def __init__(self, config: GALIPConfig):
        nn.Module.__init__(self)  # DFGAN's networks are replaced, not built

        if config.resolution < 8 or config.resolution & (config.resolution - 1):
            raise ValueError(f"resolution must be a power of two of at least 8, not {config.resolution}")
        scorer = pinned_clip(config)
        self.clip = scorer  # frozen and external: leaves checkpoints, found again by name or path and hash
        vit = FrozenViT(scorer)
        if vit.grid < 4:
            raise ValueError(f"the CLIP's ViT has a {vit.grid}x{vit.grid} patch grid; GALIP needs at least 4x4")
        ratio = config.grid // vit.grid
        if ratio < 1 or config.grid % vit.grid or ratio & (ratio - 1):
            raise ValueError(f"the generator's output grid ({config.grid}) must be the CLIP's patch grid ({vit.grid}) "
                             "times a power of two")
        config.d_layers = sorted(config.d_layers) if config.d_layers is not None else default_d_layers(vit.depth)
        config.prompt_layers = sorted(config.prompt_layers) if config.prompt_layers is not None else default_prompt_layers(vit.depth)
        for name in ("d_layers", "prompt_layers"):
            layers = getattr(config, name)
            if not layers or len(set(layers)) != len(layers) or not all(0 <= i < vit.depth for i in layers):
                raise ValueError(f"{name} must be distinct block indices in 0..{vit.depth - 1} of the CLIP's ViT, not {layers}")
        self.config = config
        self.resolution = config.resolution
        self.vit = vit
        self.autoencoder = None
        if config.autoencoder is not None:
            self._set_autoencoder(KLAutoencoder.from_config(config.autoencoder))
        dim = int(scorer.model.config.projection_dim)
        self.generator = Generator(config, vit, dim)
        self._pending = None  # the fakes of the discriminator's step, for the generator's (see _fakes)
        self.discriminator = Discriminator(config, vit.width, vit.grid, len(config.d_layers), dim)

    def external_prefixes(self) -> tuple[str, ...]:
        return ("clip.",)

    def train(self, mode: bool = True):
        nn.Module.train(self, mode)
        self.clip.eval()  # frozen
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    @torch.no_grad()
    def sentence_embedding(self, prompts: list[str]) -> torch.Tensor:
        """The frozen CLIP's sentence embedding, projected and not normalized, as the code uses it."""
        return self.clip.text_features(prompts)

    def fit_whitening(self, captions):
        raise NotImplementedError("GALIP reads CLIP's sentence embedding as it is")

    # --- training -----------------------------------------------------------------
    def init_training(self, init: dict, device) -> None:
        """In latent mode, the frozen autoencoder from init.autoencoder."""
        if self.autoencoder is not None:
            if not init.get("autoencoder"):
                raise ValueError("GALIP in latent mode draws a trained autoencoder's latents: give its folder as "
                                 "init.autoencoder (trilemma/weights/shapes-ldm-f8), or remove model.autoencoder")
            self._set_autoencoder(frozen_autoencoder(self.autoencoder, init["autoencoder"], "GAN"))
            self.autoencoder.to(device)

    def training_inputs(self) -> TrainingInputs:
        """Pixels for CLIP to read (the discriminator sees every image through it); in latent mode, the scale of
        the autoencoder's latents (from 1,024 training images)."""
        return TrainingInputs(self.resolution, "pixels", self.autoencoder, latent_scale=self.autoencoder is not None,
                              hard_negatives=self.config.hard_mismatch)

    def fit_data(self, training: TrainingSet) -> None:
        if training.latent_scale is not None:
            self.config.latent_scale = training.latent_scale

    def _fakes(self, batch: dict) -> dict:
        """The generator's images for this batch and their CLIP features, with their graph: made once in the
        discriminator's step and reused by the generator's, as the code's loop does. Kept on the model, not in the
        batch (a data-parallel wrapper copies the batch for each call)."""
        if self._pending is None or self._pending["text"] != list(batch["text"]):
            sentence = self.sentence_embedding(batch["text"])
            z = torch.randn(sentence.shape[0], self.config.z_dim, device=sentence.device)
            maps, embedding = self.vit.features(self.render(self.generator(z, sentence)), self.config.d_layers)
            self._pending = {"text": list(batch["text"]), "sentence": sentence, "maps": maps, "embedding": embedding}
        return self._pending

    def _real_images(self, batch: dict) -> torch.Tensor:
        real = batch["pixel_values"]
        if self.autoencoder is not None and self.config.reals_through_autoencoder:
            real = self.render(self.autoencoder.encode(real) * self.config.latent_scale)
        return real

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        fakes = self._fakes(batch)
        if optimizer_name == "discriminator":
            with torch.no_grad():
                real_maps, _ = self.vit.features(self._real_images(batch), self.config.d_layers)
            # MA-GP is taken on the real image's CLIP features and the sentence, as the code does.
            return self.discriminator_loss(real_maps, fakes["sentence"], fakes["maps"], batch)
        self._pending = None
        D = self.discriminator
        adversarial = -D.logits(D.features(fakes["maps"]), fakes["sentence"]).mean()
        similarity = F.cosine_similarity(fakes["embedding"], fakes["sentence"], dim=-1).mean()
        loss = adversarial - self.config.sim_weight * similarity
        return {"loss": loss, "g": adversarial.detach(), "clip_sim": similarity.detach()}
