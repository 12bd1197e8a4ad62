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
    ConditionalSampler,
    base_resolution,
    check_choice,
    check_float,
    check_image_config,
    check_int,
    group_count,
    resolve_arch,
    stage_widths,
    upsample,
)

LIKELIHOODS = ("gaussian", "bernoulli")
PRIORS = ("standard", "class_gaussian", "class_mixture")
# "class_mixture": a class of n images gets at most n // 20 components. Fewer images per component replay
# the training codes: shapes:32 (600 images a class) at n // 10 / n // 5: FID 17 -> 14.7 / 10.8 but
# near-copies 0.03 % -> 0.67 % / 3.97 % (the target is <= 0.5 %; benchmarks/QUALITY.md).
MIN_IMAGES_PER_COMPONENT = 20
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
    # Where ``sample`` draws z: "standard" N(0, I), or "class_gaussian": per class, the Gaussian fitted to
    # the aggregate posterior of the training images (``fit_prior``; ex-post density estimation, Ghosh
    # et al. 2020), which avoids decoding from regions of N(0, I) that no training image maps to; or
    # "class_mixture": per class, a full-covariance Gaussian mixture fitted the same way by EM, for classes
    # whose codes form several clusters (one Gaussian over them samples the blurry space between).
    prior: str = "standard"
    prior_components: int = 20  # "class_mixture": components per class (fewer for classes of few images)
    # ``sample`` draws z = prior(prior_scale * temperature * eps): the prior's spread, as the model's own
    # sampling temperature (the truncation / temperature trick of BigGAN and Glow). 1 = the fitted prior.
    prior_scale: float = 1.0
    # Label guidance at sampling time (the extrapolation of classifier-free guidance, Ho & Salimans 2022,
    # with the mean class embedding as the label-free input): D(z, y) + guidance * (D(z, y) - D(z, e_mean)).
    # 0 = the plain decoder mean. Training and likelihoods (the audit) never use it.
    guidance: float = 0.0

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
        check_choice("prior", self.prior, PRIORS)
        check_int("prior_components", self.prior_components, 1)
        check_float("prior_scale", self.prior_scale, 0.0, 10.0, open_low=True)
        check_float("guidance", self.guidance, 0.0, 10.0)

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


class CVAE(ConditionalSampler):
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
        if cfg.prior == "class_gaussian":  # N(0, I) per class until fit_prior
            eye = torch.eye(cfg.latent_dim).expand(cfg.num_classes, -1, -1).clone()
            self.register_buffer("prior_mean", torch.zeros(cfg.num_classes, cfg.latent_dim))
            self.register_buffer("prior_scale_tril", eye)  # (K, D, D) lower-triangular
        elif cfg.prior == "class_mixture":  # N(0, I) per class (one component of weight 1) until fit_prior
            k, m, d = cfg.num_classes, cfg.prior_components, cfg.latent_dim
            self.register_buffer("prior_weights", F.one_hot(torch.zeros(k, dtype=torch.long), m).float())
            self.register_buffer("prior_means", torch.zeros(k, m, d))
            eyes = torch.eye(d).expand(k, m, -1, -1).clone()
            self.register_buffer("prior_scale_trils", eyes)  # (K, M, D, D) lower-triangular

    @property
    def noise_dim(self) -> int:
        """Size of the noise ``sample`` draws per image: z's, plus for "class_mixture" two dimensions whose
        angle picks the component (an angle does not change with the temperature)."""
        return self.config.latent_dim + (2 if self.config.prior == "class_mixture" else 0)

    def prior_mixture(self) -> tuple[Tensor, Tensor, Tensor]:
        """The fitted class prior as a mixture: weights (K, M), means (K, M, D) and Cholesky factors
        (K, M, D, D); "class_gaussian" is a mixture of one component."""
        if self.config.prior == "class_mixture":
            return self.prior_weights, self.prior_means, self.prior_scale_trils
        if self.config.prior == "class_gaussian":
            return (
                self.prior_mean.new_ones(len(self.prior_mean), 1),
                self.prior_mean[:, None],
                self.prior_scale_tril[:, None],
            )
        raise ValueError(f"prior_mixture needs a fitted prior ({PRIORS[1:]}), not {self.config.prior!r}")

    def encode(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x, y): mean and log-variance, each (B, latent_dim)."""
        h = torch.cat([self.enc_features(x), self.embed(labels)], dim=1)  # (B, F + E)
        mu, logvar = self.encoder(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode_logits(self, z: Tensor, labels: Tensor) -> Tensor:
        """Raw decoder output (B, C, H, W): the Gaussian mean, or Bernoulli logits."""
        return self._decode_embedded(z, self.embed(labels))

    def _decode_embedded(self, z: Tensor, embedding: Tensor) -> Tensor:
        """Raw decoder output (B, C, H, W) for z (B, D) and class embeddings (B, E)."""
        cfg = self.config
        out = self.decoder(torch.cat([z, embedding], dim=1))
        return out.view(-1, cfg.channels, cfg.image_size, cfg.image_size)  # (B, C, H, W)

    def _mean(self, out: Tensor) -> Tensor:
        """Raw decoder output -> the decoder mean in [-1, 1]."""
        mean = out if self.config.likelihood == "gaussian" else torch.tanh(out / 2)  # 2*sigmoid-1
        return mean.clamp(-1.0, 1.0)

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:
        """Decoder mean in [-1, 1], shape (B, C, H, W)."""
        return self._mean(self.decode_logits(z, labels))

    def guided_decode(self, z: Tensor, labels: Tensor, guidance: float) -> Tensor:
        """``decode`` pushed away from the label-free decode (config ``guidance``): raw outputs
        D(z, y) + w (D(z, y) - D(z, e_mean)), e_mean the mean class embedding; w = 0 is ``decode``."""
        out = self.decode_logits(z, labels)  # (B, C, H, W)
        if guidance:
            e_mean = self.embed.weight.mean(0).expand(len(z), -1)  # (B, E)
            out = out + guidance * (out - self._decode_embedded(z, e_mean))
        return self._mean(out)

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
    def fit_prior(self, images: Tensor, labels: Tensor, batch: int = 1024) -> None:
        """Fit the class prior to the aggregate posterior of ``images`` (N, C, H, W); class c has n_c images.

        "class_gaussian": mean = mean of the posterior means; covariance = covariance of the posterior
        means + mean posterior variance (the moments of the mixture of the q(z|x, c)), shrunk towards I by
        D / (n_c + D) so that few images (D = latent_dim) still give a proper Gaussian.
        "class_mixture": ``_fit_mixture`` of min(prior_components, n_c // MIN_IMAGES_PER_COMPONENT)
        components (at least one) to the posterior means, each covariance + the class's mean posterior
        variance.
        Classes without images keep N(0, I). Deterministic for given weights and data.
        """
        if self.config.prior not in PRIORS[1:]:
            raise ValueError(f"fit_prior needs prior in {PRIORS[1:]}, not {self.config.prior!r}")
        was_training = self.training
        self.eval()
        device = next(iter(self.buffers())).device
        mus, variances = [], []
        for i in range(0, len(images), batch):
            mu, logvar = self.encode(images[i : i + batch].to(device), labels[i : i + batch].to(device))
            mus.append(mu.double())
            variances.append(logvar.double().exp())
        mu, var = torch.cat(mus), torch.cat(variances)  # (N, D) each
        labels = labels.to(device)
        dim = mu.shape[1]
        eye = torch.eye(dim, dtype=torch.float64, device=device)
        for c in range(self.config.num_classes):
            sel = labels == c
            n = int(sel.sum())
            if n == 0:
                continue
            if self.config.prior == "class_mixture":
                k = max(1, min(self.config.prior_components, n // MIN_IMAGES_PER_COMPONENT))
                extra = torch.diag(var[sel].mean(0)) + 1e-4 * eye
                weights, means, trils = _fit_mixture(mu[sel].float(), k, extra.float())
                self.prior_weights[c] = 0.0
                self.prior_weights[c, :k] = weights
                self.prior_means[c, :k] = means
                self.prior_scale_trils[c, :k] = trils
                continue
            m = mu[sel].mean(0)
            centred = mu[sel] - m
            cov = centred.T @ centred / max(n - 1, 1) + torch.diag(var[sel].mean(0))
            shrink = dim / (n + dim)
            cov = (1 - shrink) * cov + shrink * eye
            self.prior_mean[c] = m.float()
            self.prior_scale_tril[c] = torch.linalg.cholesky(cov).float()
        self.train(was_training)

    def prior_latent(self, eps: Tensor, labels: Tensor) -> Tensor:
        """z (B, D) for standard-normal ``eps`` (B, noise_dim) under the configured prior and ``prior_scale``.

        "class_mixture": the angle of the last two dimensions, uniform on the circle, picks the component
        by the class's cumulative weights; the first D are the component's standard-normal draw."""
        cfg = self.config
        if cfg.prior == "standard":
            return eps * cfg.prior_scale
        weights, means, trils = self.prior_mixture()  # (K, M), (K, M, D), (K, M, D, D)
        comp = torch.zeros_like(labels)
        if cfg.prior == "class_mixture":
            u = (torch.atan2(eps[:, -2], eps[:, -1]) + math.pi) / (2 * math.pi)  # (B,) uniform in [0, 1]
            cum = weights[labels].cumsum(1)  # (B, M)
            comp = torch.searchsorted(cum, (u * cum[:, -1])[:, None]).squeeze(1).clamp(max=cum.shape[1] - 1)
            eps = eps[:, : cfg.latent_dim]
        mean, tril = means[labels, comp], trils[labels, comp]  # (B, D), (B, D, D)
        return mean + torch.einsum("bij,bj->bi", tril, eps * cfg.prior_scale)

    def images_from_noise(self, z: Tensor, labels: Tensor) -> Tensor:
        """The decoder mean at ``prior_latent(z)`` (the configured prior; identity for "standard"), with
        the configured label ``guidance``."""
        return self.guided_decode(self.prior_latent(z, labels), labels, self.config.guidance)


def mixture_log_joint(x: Tensor, weights: Tensor, means: Tensor, trils: Tensor) -> Tensor:
    """log(w_m N(x_n | mean_m, L_m L_m^T)) (M, N) for points ``x`` (N, D) and a mixture of weights (M,),
    means (M, D) and Cholesky factors (M, D, D); a weight of 0 gives -inf. Its logsumexp over M is the
    mixture's log-density."""
    white = torch.linalg.solve_triangular(trils, (x[None] - means[:, None]).transpose(1, 2), upper=False)
    log_det = trils.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (M,)
    log_n = -0.5 * white.pow(2).sum(1) - log_det[:, None] - x.shape[1] * _HALF_LOG_2PI  # (M, N)
    return log_n + weights.log()[:, None]


def _fit_mixture(
    x: Tensor, m: int, extra_cov: Tensor, iters: int = 60, tol: float = 1e-5
) -> tuple[Tensor, ...]:
    """A full-covariance Gaussian mixture of ``m`` components fitted to ``x`` (n, D) by EM: weights (m,),
    means (m, D) and Cholesky factors (m, D, D) of the covariances, each + ``extra_cov`` (D, D).

    Deterministic: k-means++ seeding from a CPU generator seeded 0, then EM until the mean log-likelihood
    gains less than ``tol`` nats or ``iters`` steps.
    """
    n = len(x)
    gen = torch.Generator().manual_seed(0)
    picks = [int(torch.randint(n, (1,), generator=gen))]
    d2 = (x - x[picks[0]]).pow(2).sum(1)  # (n,) squared distance to the nearest centre so far
    for _ in range(m - 1):
        picks.append(int(torch.multinomial(d2.cpu().float() + 1e-12, 1, generator=gen)))
        d2 = torch.minimum(d2, (x - x[picks[-1]]).pow(2).sum(1))
    centres = x[picks]  # (m, D)
    resp = F.one_hot(torch.cdist(x, centres).argmin(1), m).to(x.dtype)  # (n, m) hard first assignment
    last = -math.inf
    for _ in range(iters):
        nk = resp.sum(0) + 1e-9  # (m,)  M step
        weights = nk / nk.sum()
        means = resp.T @ x / nk[:, None]  # (m, D)
        diff = x[None] - means[:, None]  # (m, n, D)
        cov = torch.einsum("nm,mni,mnj->mij", resp, diff, diff) / nk[:, None, None] + extra_cov
        trils = torch.linalg.cholesky(cov)  # (m, D, D)
        log_p = mixture_log_joint(x, weights, means, trils)  # (m, n)  E step
        resp = torch.softmax(log_p, 0).T
        ll = torch.logsumexp(log_p, 0).mean().item()
        if ll - last < tol:
            break
        last = ll
    return weights, means, trils
