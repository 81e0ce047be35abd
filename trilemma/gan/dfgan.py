"""DF-GAN (Tao et al., 2022, "DF-GAN: A Simple and Effective Baseline for Text-to-Image Synthesis").

Written by hand after the paper and its code (tobran/DF-GAN): no maintained library ships it.
- Generator: z (100-d) -> a 4x4 map -> up-sampling residual blocks, each fusing the text twice with
  deep fusion blocks (DFBlock: two affine layers whose scale and shift are MLPs of [z, sentence],
  initialized to the identity, each followed by LeakyReLU) -> RGB with tanh.
- Discriminator: down-sampling residual blocks to a 4x4 feature map; the one-way output
  concatenates it with the tiled sentence embedding and maps the pair to one logit.
- Losses: hinge, with mismatched (image, text) pairs as a third kind of fake; the matching-aware
  gradient penalty (MA-GP) on real images with their matching text, gradients taken with respect
  to both the image and the sentence, k = 2, p = 6.
- Adam with betas (0.0, 0.9); the discriminator's rate is 4x the generator's (1e-4 and 4e-4).

The sentence embedding comes from a frozen text encoder of the project (the masked mean of its
token states): the transformer trained with a shipped diffusion model, or a frozen pretrained one.
DF-GAN itself used a frozen pretrained bi-LSTM; a frozen encoder also keeps the GAN's unstable
game from moving the text space under the discriminator.

With `autoencoder` set, the same generator, discriminator and losses work in the latent space of a
frozen KL autoencoder (the first stage of the project's latent diffusion) and its decoder renders the
pixels, as latent diffusion does. On this CPU the pixel GAN spent its compute on 64x64 maps 16
channels wide and drew blobs (the shapes-dfgan card); at 8x8 the same compute buys
wide layers, and the decoder draws the edges. `latent_blocks` adds residual blocks at the latent
resolution, since an 8x8 grid leaves only one up-sampling block.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.autoencoders.kl import KLAutoencoder, frozen_autoencoder
from trilemma.data.training import TrainingInputs, TrainingSet
from trilemma.gan.options import GAN
from trilemma.model import TrainableModel, TextToImageModel, check_prompts, image_seeds, to_pil
from trilemma.text.encoder import TransformerTextEncoder, masked_mean
from trilemma.text.pretrained import PretrainedTextEncoder, build_text_encoder
from trilemma.text.tokenizer import PromptTokenizer



WHITENING_CAPTIONS = 20000  # captions whose sentence embeddings fit the whitening (whiten_text)

@dataclass
class DFGANConfig:
    resolution: int = 64
    z_dim: int = 100
    ngf: int = 32  # generator width unit (the paper's code: 32 at 256 px)
    ndf: int = 32
    affine_hidden: int = 256  # width of the fusion MLPs
    text_encoder: dict = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 2, "num_heads": 4})
    tokenizer: dict = field(default_factory=lambda: PromptTokenizer().to_config())
    gp_k: float = 2.0
    gp_p: float = 6.0
    d_lr_ratio: float = 4.0  # 4e-4 / 1e-4 in the paper
    truncation: float | None = None  # sample z from a normal truncated to [-t, t] (None: plain normal)
    autoencoder: dict | None = None  # a KLAutoencoder config: generate its latents (None: pixels)
    latent_scale: float = 1.0  # 1 / std of the training latents, set when training starts
    latent_blocks: int = 0  # residual blocks without resampling at the output (G) and input (D) grid
    # Whiten the sentence embedding with statistics of the training captions (ZCA, eigenvalues
    # floored by whiten_eps). Measured on the shapes-ldm-f8 encoder's mean-pooled states: 10 of
    # 128 directions hold 97% of the variance, mostly color; "a red circle" and "a red square"
    # lie 1.8 apart where "a red circle" and "a blue circle" lie 5.9, and a GAN trained on it
    # got colors right and shapes wrong.
    whiten_text: bool = False
    whiten_eps: float = 1e-3
    # Half of the mismatched pairs are hard negatives (trilemma.shapes.negatives.hard_negative: the same
    # scene's caption with its relation flipped, colors swapped, count or one attribute changed)
    # instead of another image's caption. Random pairs almost never differ in only the relation,
    # so without them the discriminator has no reason to check "left" against the image.
    hard_mismatch: bool = False

    @property
    def grid(self) -> int:
        """The side of what G draws and D reads: the image, or the autoencoder's latent."""
        if self.autoencoder is None:
            return self.resolution
        return self.resolution // 2 ** (len(self.autoencoder["block_out_channels"]) - 1)

    @property
    def channels(self) -> int:
        return 3 if self.autoencoder is None else self.autoencoder["latent_channels"]

    @property
    def levels(self) -> int:
        return int(math.log2(self.grid)) - 2  # 4 px -> grid


def block_channels(unit: int, levels: int) -> list[int]:
    """The code's get_G_in_out_chs: unit * min(2^i, 8), widest at the 4x4 end."""
    return [unit * min(2 ** i, 8) for i in range(levels + 1)][::-1]


class Affine(nn.Module):
    """Channel-wise scale and shift from the condition, initialized to the identity (gamma 1, beta 0)."""

    def __init__(self, cond_dim: int, channels: int, hidden: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.beta = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        nn.init.zeros_(self.gamma[2].weight), nn.init.ones_(self.gamma[2].bias)
        nn.init.zeros_(self.beta[2].weight), nn.init.zeros_(self.beta[2].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.gamma(cond)[:, :, None, None] * x + self.beta(cond)[:, :, None, None]


class DFBlock(nn.Module):
    """Deep fusion: affine, LeakyReLU, affine, LeakyReLU."""

    def __init__(self, cond_dim: int, channels: int, hidden: int):
        super().__init__()
        self.affine0, self.affine1 = Affine(cond_dim, channels, hidden), Affine(cond_dim, channels, hidden)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.affine0(x, cond), 0.2)
        return F.leaky_relu(self.affine1(x, cond), 0.2)


class GBlock(nn.Module):
    def __init__(self, cond_dim: int, in_ch: int, out_ch: int, hidden: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.fuse1, self.c1 = DFBlock(cond_dim, in_ch, hidden), nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.fuse2, self.c2 = DFBlock(cond_dim, out_ch, hidden), nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2)
        h = self.c2(self.fuse2(self.c1(self.fuse1(x, cond)), cond))
        return self.shortcut(x) + h


def image_decoder(config, cond_dim: int, chs: list[int]) -> tuple[nn.ModuleList, nn.Sequential]:
    """The generator's up-sampling blocks (channels `chs`), `latent_blocks` more at the output grid, and the output
    convolution. Pixels end in tanh (GALIP's code comments its tanh out and clamps at sampling); latents are scaled
    to unit variance with tails past 1, so they stay linear."""
    blocks = nn.ModuleList(
        [GBlock(cond_dim, a, b, config.affine_hidden) for a, b in zip(chs[:-1], chs[1:])]
        + [GBlock(cond_dim, chs[-1], chs[-1], config.affine_hidden, upsample=False) for _ in range(config.latent_blocks)])
    to_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(chs[-1], config.channels, 3, 1, 1),
                           nn.Tanh() if config.autoencoder is None else nn.Identity())
    return blocks, to_rgb


class Generator(nn.Module):
    def __init__(self, config: DFGANConfig, sentence_dim: int):
        super().__init__()
        chs = block_channels(config.ngf, config.levels)
        cond_dim = config.z_dim + sentence_dim
        self.fc = nn.Linear(config.z_dim, chs[0] * 4 * 4)
        self.blocks, self.to_rgb = image_decoder(config, cond_dim, chs)

    def forward(self, z: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, 4, 4)
        cond = torch.cat([z, sentence], dim=1)
        for block in self.blocks:
            h = block(h, cond)
        return self.to_rgb(h)


class DBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, downsample: bool = True):
        super().__init__()
        self.downsample = downsample
        first = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False) if downsample else nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.residual = nn.Sequential(first, nn.LeakyReLU(0.2, inplace=True),
                                      nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.LeakyReLU(0.2, inplace=True))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))  # the residual branch fades in from zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        return (F.avg_pool2d(shortcut, 2) if self.downsample else shortcut) + self.gamma * self.residual(x)


class Discriminator(nn.Module):
    """Image features down to 4x4 (NetD), then the one-way conditional output (NetC)."""

    def __init__(self, config: DFGANConfig, sentence_dim: int):
        super().__init__()
        chs = block_channels(config.ndf, config.levels)[::-1]
        self.conv_img = nn.Conv2d(config.channels, chs[0], 3, 1, 1)
        self.blocks = nn.Sequential(*[DBlock(chs[0], chs[0], downsample=False) for _ in range(config.latent_blocks)],
                                    *(DBlock(a, b) for a, b in zip(chs[:-1], chs[1:])))
        self.joint = nn.Sequential(nn.Conv2d(chs[-1] + sentence_dim, config.ndf * 2, 3, 1, 1, bias=False),
                                   nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(config.ndf * 2, 1, 4, 1, 0, bias=False))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv_img(images))

    def logits(self, features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        tiled = sentence[:, :, None, None].expand(-1, -1, features.shape[2], features.shape[3])
        return self.joint(torch.cat([features, tiled], dim=1)).view(-1)


class DFGAN(TextToImageModel):
    family = "gan"
    config_class = DFGANConfig
    init_keys = ("autoencoder", "text_encoder")  # the latent mode's first stage; a trained text encoder
    generate_options = GAN

    def __init__(self, config: DFGANConfig):
        super().__init__()
        if config.resolution < 8 or config.resolution & (config.resolution - 1):
            raise ValueError(f"resolution must be a power of two of at least 8, not {config.resolution}")
        if config.grid < 8:
            raise ValueError(f"the autoencoder's latent is {config.grid}x{config.grid}; the GAN needs at least 8x8")
        self.config = config
        self.resolution = config.resolution
        self.tokenizer = PromptTokenizer.from_config(config.tokenizer)
        self.text_encoder, self.tokenize, config.text_encoder = build_text_encoder(config.text_encoder, self.tokenizer)
        self.text_encoder.requires_grad_(False)
        self.autoencoder = None
        if config.autoencoder is not None:
            self._set_autoencoder(KLAutoencoder.from_config(config.autoencoder))
        dim = self.text_encoder.hidden_size
        self.generator = Generator(config, dim)
        self.discriminator = Discriminator(config, dim)
        if config.whiten_text:  # set from the training captions when training starts
            self.register_buffer("text_mean", torch.zeros(dim))
            self.register_buffer("text_whitening", torch.eye(dim))

    def _set_autoencoder(self, autoencoder: KLAutoencoder) -> None:
        if autoencoder.config.resolution != self.resolution:
            raise ValueError(f"the autoencoder is for {autoencoder.config.resolution} px, the GAN for {self.resolution}")
        self.autoencoder = autoencoder.requires_grad_(False).eval()  # trained on its own, then frozen
        self.config.autoencoder = autoencoder.to_config()

    def external_prefixes(self) -> tuple[str, ...]:
        return ("text_encoder.",) if isinstance(self.text_encoder, PretrainedTextEncoder) else ()

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()  # frozen
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    # --- text and noise -----------------------------------------------------------
    @torch.no_grad()
    def sentence_embedding(self, prompts: list[str]) -> torch.Tensor:
        """The masked mean of the frozen encoder's token states."""
        device = self.generator.fc.weight.device
        ids, mask = self.tokenize(prompts)
        states, _ = self.text_encoder(ids.to(device), mask.to(device))
        sentence = masked_mean(states, mask)
        if self.config.whiten_text:
            sentence = (sentence - self.text_mean) @ self.text_whitening
        return sentence

    @torch.no_grad()
    def fit_whitening(self, captions: list[str]) -> None:
        """ZCA whitening of the (unwhitened) sentence embedding over these captions."""
        self.text_mean.zero_(), self.text_whitening.copy_(torch.eye(self.text_mean.numel()))
        self.config.whiten_text = False
        try:
            s = torch.cat([self.sentence_embedding(captions[i:i + 1024]) for i in range(0, len(captions), 1024)])
        finally:
            self.config.whiten_text = True
        eigenvalues, vectors = torch.linalg.eigh(torch.cov((s - s.mean(0)).T.double()))
        scale = (eigenvalues.clamp(min=0) + self.config.whiten_eps).rsqrt()
        self.text_mean.copy_(s.mean(0))
        self.text_whitening.copy_((vectors * scale) @ vectors.T)

    def noise(self, seeds: list[int], truncation: float | None = None) -> torch.Tensor:
        """z per seed; with truncation t, entries outside [-t, t] are redrawn (the truncation trick)."""
        rows = []
        for s in seeds:
            g = torch.Generator().manual_seed(s)
            z = torch.randn(self.config.z_dim, generator=g)
            if truncation is not None:
                if truncation <= 0:
                    raise ValueError("truncation must be positive")
                for _ in range(100):
                    outside = z.abs() > truncation
                    if not outside.any():
                        break
                    z[outside] = torch.randn(int(outside.sum()), generator=g)
                z = z.clamp(-truncation, truncation)
            rows.append(z)
        return torch.stack(rows).to(self.generator.fc.weight.device)

    # --- training -----------------------------------------------------------------
    def core_networks(self):
        return [self.generator]

    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0):
        # The discriminator steps first, as in DF-GAN's loop.
        return {"discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=learning_rate * self.config.d_lr_ratio,
                                                  betas=(0.0, 0.9)),
                "generator": torch.optim.Adam(self.generator.parameters(), lr=learning_rate, betas=(0.0, 0.9))}

    def init_training(self, init: dict, device) -> None:
        """Take the frozen text encoder from a trained model folder (init.text_encoder), if named; in latent mode
        take the autoencoder (init.autoencoder: an autoencoder folder, or a latent diffusion model's)."""
        source = init.get("text_encoder")
        if source and not isinstance(self.text_encoder, PretrainedTextEncoder):
            donor = TrainableModel.from_pretrained(source)
            encoder = donor.text_encoder if hasattr(donor, "text_encoder") else donor.text_encoders[0]
            if not isinstance(encoder, TransformerTextEncoder) or donor.tokenizer.to_config() != self.tokenizer.to_config():
                raise ValueError(f"{source}: its text encoder or tokenizer is not a trained transformer of this project's vocabulary")
            if encoder.hidden_size != self.text_encoder.hidden_size:
                raise ValueError(f"{source}: its text encoder is {encoder.hidden_size} wide, but this GAN was built for "
                                 f"{self.text_encoder.hidden_size}; set the model's text_encoder hidden_size to match")
            self.config.text_encoder = {k: v for k, v in asdict(encoder.config).items() if k not in ("vocab_size", "max_length")}
            self.text_encoder = encoder.requires_grad_(False).eval()
        if self.autoencoder is not None:
            self._set_autoencoder(frozen_autoencoder(self.autoencoder, init.get("autoencoder"), "GAN"))
            self.autoencoder.to(device)
        else:
            # Channels-last convolutions train 1.2x faster on this CPU (oneDNN), measured at 64 px.
            self.generator.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)
        self.to(device)

    def training_inputs(self) -> TrainingInputs:
        """Pixels, or in latent mode the autoencoder's latents encoded once (and their scale); hard negatives for
        half the mismatched pairs (hard_mismatch); captions to whiten the sentence embedding on (whiten_text)."""
        latent = self.autoencoder is not None
        return TrainingInputs(self.resolution, "latents" if latent else "pixels", self.autoencoder, latent_scale=latent,
                              hard_negatives=self.config.hard_mismatch,
                              captions=WHITENING_CAPTIONS if self.config.whiten_text else 0)

    def fit_data(self, training: TrainingSet) -> None:
        if training.latent_scale is not None:
            self.config.latent_scale = training.latent_scale
        if self.config.whiten_text:
            self.fit_whitening(training.captions)

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        if self.autoencoder is not None:
            latents = batch["latents"] if "latents" in batch else self.autoencoder.encode(batch["pixel_values"]).detach()
            real = latents * self.config.latent_scale
        else:
            real = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        sentence = self.sentence_embedding(batch["text"])
        b = real.shape[0]
        z = torch.randn(b, self.config.z_dim, device=real.device)
        D = self.discriminator
        if optimizer_name == "discriminator":
            with torch.no_grad():
                fake = self.generator(z, sentence)
            return self.discriminator_loss(real, sentence, fake, batch)
        fake = self.generator(z, sentence)
        loss = -D.logits(D.features(fake), sentence).mean()
        return {"loss": loss, "g": loss.detach()}

    def discriminator_loss(self, real: torch.Tensor, sentence: torch.Tensor, fake: torch.Tensor, batch: dict) -> dict:
        """Hinge loss on real, fake and mismatched pairs, plus MA-GP on the real pairs: `real` and `fake` are what the
        discriminator reads (DF-GAN: images or latents; GALIP: CLIP features)."""
        D = self.discriminator
        real = real.detach().requires_grad_(True)
        sentence = sentence.detach().requires_grad_(True)
        real_features = D.features(real)
        real_logits = D.logits(real_features, sentence)
        # Mismatched pairs: each image with the next image's sentence.
        mismatch_logits = D.logits(real_features, sentence.roll(1, dims=0))
        if self.config.hard_mismatch:
            b = real.shape[0]
            hard_logits = D.logits(real_features, self.sentence_embedding(batch["negative_text"]))
            mismatch_logits = torch.cat([mismatch_logits[: b // 2], hard_logits[b // 2:]])
        fake_logits = D.logits(D.features(fake.detach()), sentence)
        loss_real = F.relu(1.0 - real_logits).mean()
        loss_fake = F.relu(1.0 + fake_logits).mean()
        loss_mismatch = F.relu(1.0 + mismatch_logits).mean()
        gp = self.matching_aware_gradient_penalty(real, sentence, real_logits)
        loss = loss_real + (loss_fake + loss_mismatch) / 2.0 + gp
        return {"loss": loss, "d_real": loss_real.detach(), "d_fake": loss_fake.detach(),
                "d_mismatch": loss_mismatch.detach(), "ma_gp": gp.detach()}

    def matching_aware_gradient_penalty(self, real: torch.Tensor, sentence: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """MA-GP: k * E[ ||(d D / d image, d D / d sentence)||_2 ^ p ] on real, matching pairs."""
        grad_img, grad_sent = torch.autograd.grad(logits.sum(), (real, sentence), create_graph=True)
        grad = torch.cat([grad_img.flatten(1), grad_sent.flatten(1)], dim=1)
        return self.config.gp_k * grad.norm(2, dim=1).pow(self.config.gp_p).mean()

    # --- sampling -----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts, seed: int = 0, progress: bool = False, **options):
        """One forward pass per image; image i uses z from seed + i. `options`: truncation, batch_size."""
        prompts = check_prompts(prompts)
        options = self.parse_options(**options)
        truncation, batch_size = options.truncation, options.batch_size
        truncation = self.config.truncation if truncation is None else truncation
        seeds = image_seeds(seed, len(prompts))
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            z = self.noise(seeds[start:start + len(chunk)], truncation)
            images += to_pil(self.render(self.generator(z, self.sentence_embedding(chunk))))
        return images

    def render(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's output as pixels in [-1, 1]: itself, or its decoded latent."""
        if self.autoencoder is None:
            return x
        return self.autoencoder.decode(x / self.config.latent_scale).clamp(-1.0, 1.0)

    @torch.no_grad()
    def interpolate(self, prompt_a: str, prompt_b: str, steps: int = 8, seed: int = 0, seed_b: int | None = None,
                    mode: str = "both", truncation: float | None = None) -> list:
        """Images along a path from (prompt_a, z_a) to (prompt_b, z_b).

        mode "text" moves the sentence embedding linearly with z fixed (z_a); "z" moves z by spherical
        interpolation (z lies on a shell of radius about sqrt(d)) with the text fixed (prompt_a);
        "both" moves the two together. z_b comes from seed_b (seed + 1 by default).
        """
        if mode not in ("text", "z", "both"):
            raise ValueError(f"mode must be 'text', 'z' or 'both', not {mode!r}")
        if steps < 2:
            raise ValueError("steps must be at least 2")
        truncation = self.config.truncation if truncation is None else truncation
        z_a, z_b = self.noise([seed, seed + 1 if seed_b is None else seed_b], truncation)
        s_a, s_b = self.sentence_embedding([prompt_a, prompt_b])
        ts = torch.linspace(0.0, 1.0, steps, device=z_a.device)
        z = torch.stack([_slerp(z_a, z_b, t) if mode != "text" else z_a for t in ts])
        s = torch.stack([torch.lerp(s_a, s_b, t) if mode != "z" else s_a for t in ts])
        return to_pil(self.render(self.generator(z, s)))


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    omega = torch.arccos((a / a.norm() * b / b.norm()).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return torch.lerp(a, b, t)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
