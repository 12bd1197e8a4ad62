"""Conditional VAE (Kingma et al. 2014, Sohn et al. 2015) with a learned Gaussian scale (sigma-VAE).

The class embedding goes into both the encoder and the decoder. With ``likelihood="gaussian"`` the
decoder outputs a mean and the model learns one global log-scale ``log sigma`` shared by every pixel
(Rybkin et al. 2021, "sigma-VAE"): the reconstruction term is the exact per-pixel Gaussian NLL, so the
balance between reconstruction and KL is learned instead of hand-tuned, which keeps samples sharp.
There are no batch-dependent layers (no BatchNorm): a loss averaged over a batch split across DDP
workers equals the loss of the whole batch, so data-parallel training matches one big batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import (
    base_resolution,
    check_choice,
    check_float,
    check_image_config,
    check_int,
    check_labels,
    group_count,
    module_device,
    resolve_arch,
    sample_noise,
    stage_widths,
    upsample,
)

LIKELIHOODS = ("gaussian", "bernoulli")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class CVAEConfig:
    """Everything needed to rebuild a CVAE; stored verbatim in a checkpoint's ``config.json``."""

    image_size: int = 8  # square image side, one of SUPPORTED_SIZES
    channels: int = 1  # 1 (grey) or 3 (RGB)
    num_classes: int = 10  # labels are 0..num_classes-1
    latent_dim: int = 16  # size of z; 16 is plenty for 8x8 digits
    hidden: int = 256  # width of the MLP layers (conv nets: their dense layer)
    arch: str = "auto"  # "mlp" | "conv" | "auto" (mlp for sides <= 16, conv above)
    beta: float = 1.0  # KL weight once the trainer's warm-up (kl_weight) reaches 1
    likelihood: str = "gaussian"  # "gaussian" (learned global scale) | "bernoulli" (pixels as probabilities)
    depth: int = 2  # hidden layers in the MLP encoder and decoder
    embed_dim: int = 16  # class embedding size, fed to encoder and decoder
    conv_width: int = 64  # conv channels at the base resolution (halved per x2 stage, min 16)
    min_log_sigma: float = -3.0  # floor of the learned Gaussian log-scale (sigma >= 0.05): no NLL blow-up

    def __post_init__(self) -> None:
        check_image_config(self.image_size, self.channels, self.arch)
        check_int("num_classes", self.num_classes, 2)
        check_int("latent_dim", self.latent_dim, 1)
        check_int("hidden", self.hidden, 1)
        check_int("depth", self.depth, 1)
        check_int("embed_dim", self.embed_dim, 1)
        check_int("conv_width", self.conv_width, 1)
        check_float("beta", self.beta, 0.0)
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_float("min_log_sigma", self.min_log_sigma, -20.0, 5.0)

    @property
    def resolved_arch(self) -> str:
        """``"mlp"`` or ``"conv"`` (``"auto"`` resolved from the image size)."""
        return resolve_arch(self.arch, self.image_size)


class CVAEOutput(NamedTuple):
    """What ``CVAE.forward`` returns; every scalar is a mean over the batch."""

    loss: Tensor  # recon + kl_weight * beta * kl
    recon: Tensor  # negative log-likelihood of x, summed over pixels
    kl: Tensor  # KL(q(z|x,y) || N(0, I)), summed over latent dims
    x_hat: Tensor  # (B, C, H, W) decoder mean clamped to [-1, 1]


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class _ConvEncoder(nn.Module):
    """x (B, C, H, W) -> features (B, F): a stem conv and stride-2 stages down to the base resolution."""

    def __init__(self, cfg: CVAEConfig) -> None:
        super().__init__()
        base, stages = base_resolution(cfg.image_size)
        widths = stage_widths(cfg.conv_width, stages)[::-1]  # full resolution first
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 3, padding=1), nn.SiLU()]
        for w_in, w_out in pairwise(widths):
            layers += [
                nn.Conv2d(w_in, w_out, 4, stride=2, padding=1),
                nn.GroupNorm(group_count(w_out), w_out),
                nn.SiLU(),
            ]
        self.net = nn.Sequential(*layers)
        self.out_features = widths[-1] * base * base

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)  # (B, W * base * base)


class _ConvDecoder(nn.Module):
    """features (B, F) -> image (B, C, H, W): reshape to the base resolution, then x2 upsample stages."""

    def __init__(self, cfg: CVAEConfig, in_features: int) -> None:
        super().__init__()
        self.base, stages = base_resolution(cfg.image_size)
        widths = stage_widths(cfg.conv_width, stages)  # base resolution first
        self.width = widths[0]
        self.fc = nn.Linear(in_features, widths[0] * self.base * self.base)
        layers: list[nn.Module] = []
        for w_in, w_out in pairwise(widths):
            layers += [
                upsample(),
                nn.Conv2d(w_in, w_out, 3, padding=1),
                nn.GroupNorm(group_count(w_out), w_out),
                nn.SiLU(),
            ]
        layers.append(nn.Conv2d(widths[-1], cfg.channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        h = self.fc(h).view(-1, self.width, self.base, self.base)  # (B, W, base, base)
        return self.net(h)  # (B, C, H, W)


class CVAE(nn.Module):
    """Class-conditional VAE. ``forward`` returns the loss; ``sample`` draws images for given labels."""

    def __init__(self, config: CVAEConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        pixels = cfg.channels * cfg.image_size * cfg.image_size
        enc_hidden = [cfg.hidden] * cfg.depth
        if cfg.resolved_arch == "mlp":
            self.enc_features: nn.Module = nn.Flatten(1)
            self.encoder = _mlp([pixels + cfg.embed_dim, *enc_hidden, 2 * cfg.latent_dim])
            self.decoder: nn.Module = _mlp([cfg.latent_dim + cfg.embed_dim, *enc_hidden, pixels])
        else:
            conv = _ConvEncoder(cfg)
            self.enc_features = conv
            self.encoder = _mlp([conv.out_features + cfg.embed_dim, cfg.hidden, 2 * cfg.latent_dim])
            self.decoder = nn.Sequential(
                _mlp([cfg.latent_dim + cfg.embed_dim, cfg.hidden]), nn.SiLU(), _ConvDecoder(cfg, cfg.hidden)
            )
        if cfg.likelihood == "gaussian":  # learned global log-scale (no unused parameters: DDP needs that)
            self.log_sigma = nn.Parameter(torch.zeros(()))

    @property
    def noise_dim(self) -> int:
        """Size of the latent noise ``sample`` draws per image."""
        return self.config.latent_dim

    def encode(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x, y): mean and log-variance, each (B, latent_dim)."""
        h = torch.cat([self.enc_features(x), self.embed(labels)], dim=1)  # (B, F + E)
        mu, logvar = self.encoder(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode_logits(self, z: Tensor, labels: Tensor) -> Tensor:
        """Raw decoder output (B, C, H, W): the Gaussian mean, or Bernoulli logits."""
        cfg = self.config
        out = self.decoder(torch.cat([z, self.embed(labels)], dim=1))
        return out.view(-1, cfg.channels, cfg.image_size, cfg.image_size)  # (B, C, H, W)

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:
        """Decoder mean in [-1, 1], shape (B, C, H, W)."""
        out = self.decode_logits(z, labels)
        mean = out if self.config.likelihood == "gaussian" else torch.tanh(out / 2)  # 2*sigmoid-1
        return mean.clamp(-1.0, 1.0)

    def sigma(self) -> Tensor:
        """The Gaussian likelihood's scale (a scalar tensor), floored at exp(min_log_sigma)."""
        if self.config.likelihood != "gaussian":
            raise ValueError(f"sigma() needs likelihood='gaussian', not {self.config.likelihood!r}")
        return self.log_sigma.clamp(min=self.config.min_log_sigma).exp()

    def forward(
        self, x: Tensor, labels: Tensor, noise: Tensor | None = None, kl_weight: float = 1.0
    ) -> CVAEOutput:
        """Negative ELBO of ``x`` (B, C, H, W) in [-1, 1] given ``labels`` (B,); ``noise`` is the
        reparameterisation epsilon (B, latent_dim), drawn with ``torch.randn_like`` when None."""
        cfg = self.config
        mu, logvar = self.encode(x, labels)
        eps = torch.randn_like(mu) if noise is None else noise.to(mu)
        z = mu + eps * torch.exp(0.5 * logvar)  # (B, latent_dim)
        out = self.decode_logits(z, labels)
        if cfg.likelihood == "gaussian":
            log_sigma = self.log_sigma.clamp(min=cfg.min_log_sigma)
            nll = 0.5 * ((x - out) * torch.exp(-log_sigma)) ** 2 + log_sigma + _HALF_LOG_2PI
            mean = out
        else:
            nll = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none")
            mean = torch.tanh(out / 2)
        recon = nll.flatten(1).sum(1).mean()
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()
        loss = recon + (kl_weight * cfg.beta) * kl
        return CVAEOutput(loss=loss, recon=recon, kl=kl, x_hat=mean.detach().clamp(-1.0, 1.0))

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] for ``labels`` (B,): the decoder mean at z = temperature * eps.

        eps ~ N(0, I) is drawn on the CPU with ``generator`` (a CPU ``torch.Generator``), or taken from
        ``noise`` (B, latent_dim), so the same seed gives the same images on any device.
        """
        check_labels(labels, self.config.num_classes)
        device = module_device(self)
        z = sample_noise(labels.shape[0], self.noise_dim, device, generator, temperature, noise)
        return self.decode(z, labels.to(device))
