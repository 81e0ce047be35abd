"""The image tokenizer of the autoregressive family: a VQ-VAE (van den Oord et al., 2017) with a VQGAN
option (Esser et al., 2021, "Taming Transformers").

The convolutional encoder and decoder are diffusers' (`Encoder`/`Decoder`, the ones its `VQModel`
uses). The codebook is written here: diffusers' `VectorQuantizer` has neither EMA updates nor
dead-code restarts, and the one package that has both (vector-quantize-pytorch) pulls in four more
dependencies for what is sixty lines. Reconstruction is L1 plus a perceptual-style term: no
pretrained VGG (LPIPS) can be downloaded here, so the structural term is 1 - SSIM (torchmetrics),
which, like LPIPS, scores local structure rather than per-pixel error. VQGAN adds taming's patch
discriminator, a hinge loss, and the adaptive weight that balances its gradient against the
reconstruction's at the decoder's last layer, switched on after a warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from trilemma.autoencoders import ReconstructionPreview
from trilemma.model import TrainableModel


@dataclass
class VQConfig:
    resolution: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)  # 4 blocks: 64 px -> 8x8 tokens
    layers_per_block: int = 1
    norm_num_groups: int = 16
    latent_channels: int = 64
    codebook_size: int = 512
    codebook_dim: int = 32  # the lookup runs in a small space (as ViT-VQGAN): more codes get used
    quantizer: str = "ema"  # "ema" (codebook by exponential moving averages) or "loss" (codebook loss)
    ema_decay: float = 0.99
    commitment_beta: float = 0.25
    dead_code_threshold: float = 1.0  # a code whose EMA count falls below this is restarted on an encoder output
    ssim_weight: float = 0.5
    gan: bool = False  # VQGAN: add the patch discriminator
    disc_start: int = 2000  # steps of reconstruction only before the adversarial term starts
    disc_weight: float = 0.5
    disc_channels: int = 64
    disc_layers: int = 2

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def tokens_per_side(self) -> int:
        return self.resolution // self.downsample


class Codebook(nn.Module):
    """Nearest-neighbour vector quantization with a straight-through gradient.

    EMA mode (VQ-VAE-2, Razavi et al., 2019): codes are running means of the vectors assigned to
    them; only the commitment term trains the encoder. Dead-code restarts (Jukebox, Dhariwal et al.,
    2020): a code that has not been used lately is moved onto a random vector of the current batch.
    """

    def __init__(self, size: int, dim: int, ema: bool, decay: float, beta: float, dead_threshold: float):
        super().__init__()
        self.size, self.dim, self.ema, self.decay, self.beta, self.dead_threshold = size, dim, ema, decay, beta, dead_threshold
        init = torch.randn(size, dim) * dim ** -0.5
        if ema:
            self.register_buffer("embedding", init)
            self.register_buffer("cluster_size", torch.ones(size))
            self.register_buffer("embed_avg", init.clone())
        else:
            self.embedding = nn.Parameter(init)
            self.register_buffer("cluster_size", torch.ones(size))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of z (N, dim)."""
        distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embedding.t() + self.embedding.pow(2).sum(1)[None]
        return distances.argmin(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """z (B, dim, H, W) -> quantized z (straight-through), indices (B, H, W), loss, stats."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx = self.codes(flat.detach())
        onehot = F.one_hot(idx, self.size).type(flat.dtype)
        counts = onehot.sum(0)
        q = self.embedding[idx]  # read before the update, so idx and q agree even for a code restarted now
        loss = self.beta * F.mse_loss(flat, q.detach())
        if not self.ema:
            loss = loss + F.mse_loss(q, flat.detach())
        if self.training:
            self._update(flat.detach(), onehot, counts)
        q = flat + (q - flat).detach()
        probs = counts / counts.sum()
        stats = {"perplexity": torch.exp(-(probs * (probs + 1e-10).log()).sum()), "codes_used": (counts > 0).float().mean()}
        return q.view(b, h, w, d).permute(0, 3, 1, 2), idx.view(b, h, w), loss, stats

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor) -> None:
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            self.embed_avg.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing: no division by zero
            self.embedding.copy_(self.embed_avg / smoothed[:, None])
        dead = self.cluster_size < self.dead_threshold
        if dead.any():
            picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
            self.embedding[dead] = picks
            if self.ema:
                self.embed_avg[dead] = picks
            self.cluster_size[dead] = 1.0

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices (B, H, W) -> code vectors (B, dim, H, W)."""
        return self.embedding[idx].permute(0, 3, 1, 2)


class PatchDiscriminator(nn.Module):
    """taming-transformers' NLayerDiscriminator (the pix2pix PatchGAN): one logit per patch."""

    def __init__(self, channels: int = 64, layers: int = 2):
        super().__init__()
        seq = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = channels
        for n in range(1, layers + 1):
            c_next = channels * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(c, c_next, 4, stride, 1, bias=False), nn.BatchNorm2d(c_next), nn.LeakyReLU(0.2, True)]
            c = c_next
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # taming's init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VQTokenizer(ReconstructionPreview, TrainableModel):
    family = "first-stage"  # shared by the families; see trilemma/autoencoders
    config_class = VQConfig

    def __init__(self, config: VQConfig):
        super().__init__()
        if config.quantizer not in ("ema", "loss"):
            raise ValueError(f"quantizer must be 'ema' or 'loss', not {config.quantizer!r}")
        if config.resolution % config.downsample:
            raise ValueError(f"resolution {config.resolution} does not divide by the down-sampling {config.downsample}")
        self.config = config
        n = len(config.block_out_channels)
        common = dict(block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
                      norm_num_groups=config.norm_num_groups, mid_block_add_attention=False)
        self.encoder = Encoder(in_channels=3, out_channels=config.latent_channels, down_block_types=("DownEncoderBlock2D",) * n,
                               double_z=False, **common)
        self.decoder = Decoder(in_channels=config.latent_channels, out_channels=3, up_block_types=("UpDecoderBlock2D",) * n, **common)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.latent_channels, 1)
        self.codebook = Codebook(config.codebook_size, config.codebook_dim, config.quantizer == "ema", config.ema_decay,
                                 config.commitment_beta, config.dead_code_threshold)
        self.discriminator = PatchDiscriminator(config.disc_channels, config.disc_layers) if config.gan else None
        # Saved with the weights, so a resumed run knows whether the adversarial warm-up is over.
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self._last = None

    # --- tokens -----------------------------------------------------------------
    def quantize(self, images: torch.Tensor):
        return self.codebook(self.quant_conv(self.encoder(images)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, R, R) in [-1, 1] -> token indices (B, R/f, R/f)."""
        return self.codebook.codes(self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1).flatten(0, 2)).view(
            images.shape[0], self.config.tokens_per_side, self.config.tokens_per_side)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices (B, h, w) -> images (B, 3, R, R)."""
        return self.decoder(self.post_quant_conv(self.codebook.lookup(indices)))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images)).clamp(-1, 1)

    # --- training ---------------------------------------------------------------
    def configure_optimizers(self, learning_rate: float, weight_decay: float = 0.0):
        generator = [p for n, p in self.named_parameters() if not n.startswith("discriminator.") and p.requires_grad]
        # taming's betas (0.5, 0.9) for both players.
        optimizers = {"autoencoder": torch.optim.Adam(generator, lr=learning_rate, betas=(0.5, 0.9))}
        if self.discriminator is not None:
            optimizers["discriminator"] = torch.optim.Adam(self.discriminator.parameters(), lr=learning_rate, betas=(0.5, 0.9))
        return optimizers

    def training_step(self, batch: dict, optimizer_name: str) -> dict[str, torch.Tensor]:
        x = batch["pixel_values"]
        if optimizer_name == "discriminator":
            return self._discriminator_step(x)
        if self.training:
            self.steps_seen += 1
        z = self.quant_conv(self.encoder(x))
        q, _, vq_loss, stats = self.codebook(z)
        recon = self.decoder(self.post_quant_conv(q))
        l1 = F.l1_loss(recon, x)
        ssim = structural_similarity_index_measure(recon.clamp(-1, 1) + 1, x + 1, data_range=2.0)
        rec_loss = l1 + self.config.ssim_weight * (1 - ssim)
        loss = rec_loss + vq_loss
        out = {"l1": l1.detach(), "ssim": ssim.detach(), "vq": vq_loss.detach(), **{k: v.detach() for k, v in stats.items()}}
        if self.discriminator is not None:
            self._last = recon.detach()
            if self.gan_active:
                g_loss = -self.discriminator(recon).mean()
                weight = self._adaptive_weight(rec_loss, g_loss)
                loss = loss + weight * g_loss
                out.update(g_loss=g_loss.detach(), gan_weight=weight)
        out["loss"] = loss
        return out

    @property
    def gan_active(self) -> bool:
        return self.discriminator is not None and int(self.steps_seen) > self.config.disc_start

    def _adaptive_weight(self, rec_loss: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        """taming's lambda = |grad rec| / (|grad gan| + 1e-4) at the decoder's last layer, times disc_weight."""
        last = self.decoder.conv_out.weight
        rec_grad = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * self.config.disc_weight

    def _discriminator_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # taming's adopt_weight: both players start after the warm-up together; a discriminator trained alone
        # against a generator that ignores it would start the game saturated. Until then, a zero loss.
        if not self.gan_active:
            zero = sum(p.sum() for p in self.discriminator.parameters()) * 0.0
            return {"loss": zero, "d_real": zero.detach(), "d_fake": zero.detach()}
        fake = self._last if self._last is not None and self._last.shape == x.shape else self.reconstruct(x)
        real_logits, fake_logits = self.discriminator(x), self.discriminator(fake)
        hinge = 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
        return {"loss": hinge, "d_real": real_logits.mean().detach(), "d_fake": fake_logits.mean().detach()}


