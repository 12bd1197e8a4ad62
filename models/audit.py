"""Audit a labelled image set with a trained CVAE: likelihoods, class posteriors, outliers, reconstructions.

For an image x (C, H, W) in [-1, 1] (the training job's pixel convention) and a class c, the CVAE
defines p(x | c) = integral of p(x | z, c) p(z | c) dz. Its scores here use exactly the densities the
model was trained with (``models/cvae.py``):

- p(x | z, c): ``likelihood="gaussian"``: independent pixels N(decoder mean, sigma^2) with the learned
  global sigma (floored at exp(min_log_sigma)), a continuous density over [-1, 1] pixels;
  ``likelihood="bernoulli"``: the decoder's logits against the targets (x + 1) / 2 (the binary
  cross-entropy the model minimises). Either way, in nats per image, summed over pixels.
- p(z | c): ``prior="standard"``: N(0, I) (the prior of the training KL); ``prior="class_gaussian"``: the
  per-class Gaussian ``fit_prior`` fitted to the training images' codes (``"class_mixture"``: the per-class
  Gaussian mixture), at its fitted spread
  (``prior_scale`` is a sampling temperature, not part of the density).
- q(z | x, c): the encoder's diagonal Gaussian, used as the importance proposal.

``nll(x | c)`` is the importance-weighted bound (IWAE, Burda et al. 2016) with K samples,
-log(1/K sum_k p(x, z_k | c) / q(z_k | x, c)): an upper bound on -log p(x | c) that tightens as K grows;
K = 1 is the usual single-sample ELBO. The posterior over classes with a uniform prior is
p(c | x) = softmax_c(-nll(x | c)); the label-error score is 1 - p(y | x).

Outliers are scored twice against the same class's training images (``OutlierReference``): nll(x | y) as a
percentile, and the code's nll ``code_nll`` = -log p(E[z | x, y] | y), the posterior mean under the class
prior, as a percentile. The outlier score is the larger of the two (atypical by either test; a test that
does not see an anomaly cannot dilute the one that does). The second one catches what a likelihood
misses: smooth off-domain images (upscaled 8x8 digits) that a decoder reconstructs well but that the
encoder maps far from where the class's codes lie (Fashion-MNIST, 2,000 test images + 40 digits, K = 8:
AUROC 0.94 for the nll percentile alone, 0.99 for the code's).

Determinism: the K standard-normal draws eps come from a CPU ``torch.Generator`` seeded with
``AuditConfig.seed`` and are shared by every image and class (common random numbers): an image's
scores do not depend on the batch it is scored in, and class comparisons are not swamped by sampling
noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models.blocks import check_int, check_labels, module_device
from models.cvae import CVAE, mixture_log_joint

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class AuditConfig:
    """How the scores are estimated; stored beside every audit so its numbers can be reproduced."""

    samples: int = 32  # K importance samples per (image, class): larger K, tighter (lower) nll bound
    seed: int = 0  # seeds the K shared noise draws: same seed, same scores
    batch_size: int = 32  # images per forward chunk, each decoded K times per class (memory only)

    def __post_init__(self) -> None:
        check_int("samples", self.samples, 1)
        check_int("seed", self.seed, 0)
        check_int("batch_size", self.batch_size, 1)


class AuditScores(NamedTuple):
    """Per-image scores from ``score``; B images, C classes; tensors on the CPU."""

    nll: Tensor  # (B,) float64 nll(x | y) in nats per image, the IWAE bound with K samples
    class_nll: Tensor  # (B, C) float64 nll(x | c) for every class c
    posterior: Tensor  # (B, C) p(c | x) with a uniform class prior; rows sum to 1
    suggested: Tensor  # (B,) int64 argmax_c p(c | x)
    label_error: Tensor  # (B,) 1 - p(y | x) in [0, 1]
    # (B,) log max_{c != y} p(c | x) - log p(y | x) in nats (= nll(x | y) - min_{c != y} nll(x | c)); > 0:
    # another class wins. In log space it keeps ordering images whose 1 - p(y | x) rounds to exactly 1.0
    margin: Tensor
    code: Tensor  # (B,) float64 code_nll: -log p(E[z | x, y] | y) in nats
    outlier: Tensor | None  # (B,) percentile 0..100 of nll(x | y) among class y's training scores
    code_percentile: Tensor | None  # (B,) percentile 0..100 of ``code`` among class y's training codes
    outlier_score: Tensor | None  # (B,) 0..100, the larger of the two percentiles (NaN: no reference)


def check_cvae(model: torch.nn.Module) -> CVAE:
    """The model itself if it is a CVAE; ValueError naming what it is otherwise."""
    if not isinstance(model, CVAE):
        raise ValueError(f"audit needs a cvae model, got a {type(model).__name__}; valid: a CVAE")
    return model


def check_images(model: CVAE, images: Tensor, labels: Tensor | None = None) -> None:
    """Images must be float (B, C, H, W) of the model's shape; labels (B,) within its classes."""
    cfg = model.config
    want = (cfg.channels, cfg.image_size, cfg.image_size)
    if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"images of shape {tuple(getattr(images, 'shape', ()))} do not fit the model; "
            f"valid: (B, {want[0]}, {want[1]}, {want[2]}) floats in [-1, 1]"
        )
    if not images.is_floating_point():
        raise ValueError(f"images have dtype {images.dtype}; valid: floats in [-1, 1]")
    if labels is not None:
        check_labels(labels, cfg.num_classes)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images; valid: one per image")


def draw_eps(samples: int, dim: int, seed: int) -> Tensor:
    """(K, D) standard normal draws from a CPU generator seeded with ``seed``."""
    return torch.randn(samples, dim, generator=torch.Generator().manual_seed(seed))


def log_prior(model: CVAE, z: Tensor, cls: int) -> Tensor:
    """log p(z | c) (N,) for codes ``z`` (N, D) under the model's prior (at its fitted spread)."""
    if model.config.prior == "standard":
        return -(0.5 * z.pow(2) + _HALF_LOG_2PI).sum(1)
    weights, means, trils = (t[cls] for t in model.prior_mixture())  # (M,), (M, D), (M, D, D)
    return torch.logsumexp(mixture_log_joint(z, weights, means, trils), 0)  # empty components: -inf


def log_likelihood(model: CVAE, x: Tensor, out: Tensor) -> Tensor:
    """log p(x | z, c) (N,) given the raw decoder output ``out`` (N, C, H, W), summed over pixels."""
    cfg = model.config
    if cfg.likelihood == "gaussian":
        log_sigma = model.log_sigma.clamp(min=cfg.min_log_sigma)
        per_pixel = 0.5 * ((x - out) * torch.exp(-log_sigma)) ** 2 + log_sigma + _HALF_LOG_2PI
    else:
        per_pixel = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none")
    return -per_pixel.flatten(1).sum(1)


@torch.no_grad()
def log_weights(model: CVAE, images: Tensor, cls: int, eps: Tensor) -> Tensor:
    """log p(x, z_k | c) - log q(z_k | x, c) (K, B) for class ``cls`` and z_k = mu + sigma * eps_k.

    ``eps`` is (K, D); every image uses the same K draws.
    """
    b, k = images.shape[0], eps.shape[0]
    labels = torch.full((b,), cls, dtype=torch.long, device=images.device)
    mu, logvar = model.encode(images, labels)  # (B, D) each
    std = torch.exp(0.5 * logvar)
    eps = eps.to(mu)
    z = (mu[None] + eps[:, None] * std[None]).reshape(k * b, -1)  # (K, B, D) -> (K*B, D)
    out = model.decode_logits(z, labels.repeat(k))  # (K*B, C, H, W)
    x = images.repeat(k, 1, 1, 1)  # (K*B, C, H, W), k-major like z
    log_q = -(0.5 * eps.pow(2).sum(1)[:, None] + 0.5 * logvar.sum(1)[None]) - mu.shape[1] * _HALF_LOG_2PI
    log_p = log_likelihood(model, x, out) + log_prior(model, z, cls)  # (K*B,)
    return log_p.view(k, b) - log_q  # (K, B)


def iwae_nll(log_w: Tensor) -> Tensor:
    """The IWAE bound -log(1/K sum_k exp(log_w_k)) (B,) from log weights (K, B)."""
    return -(torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0]))


@torch.no_grad()
def code_nll(model: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """-log p(E[z | x, y] | y) (B,) float64: the posterior mean's nll under class y's prior (one encoder
    pass per image)."""
    model = check_cvae(model)
    check_images(model, images, labels)
    device = module_device(model)

    def chunk(part: Tensor, c: int) -> Tensor:
        mu, _ = model.encode(images[part].to(device, torch.float32), labels[part].to(device))
        return -log_prior(model, mu, c)

    return _by_class(labels, batch_size, chunk)


@torch.no_grad()
def given_nll(
    model: torch.nn.Module, images: Tensor, labels: Tensor, config: AuditConfig = AuditConfig()
) -> Tensor:
    """nll(x | y) (B,) float64 for each image's own label only: ``score(...).nll`` at 1/C of its cost (the
    same shared draws and IWAE bound, one class per image instead of every class)."""
    model = check_cvae(model)
    check_images(model, images, labels)
    eps = draw_eps(config.samples, model.config.latent_dim, config.seed)
    device = module_device(model)

    def chunk(part: Tensor, c: int) -> Tensor:
        return iwae_nll(log_weights(model, images[part].to(device, torch.float32), c, eps))  # (b,)

    return _by_class(labels, config.batch_size, chunk)


def _by_class(labels: Tensor, batch_size: int, fn: Callable[[Tensor, int], Tensor]) -> Tensor:
    """(B,) float64 on the CPU: ``fn(indices, c)`` over chunks of up to ``batch_size`` images of one class."""
    out = torch.empty(len(labels), dtype=torch.float64)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c)[:, 0]
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            out[part] = fn(part, int(c)).double().cpu()
    return out


def reference_scores(model: torch.nn.Module, images: Tensor, labels: Tensor, config: AuditConfig) -> Tensor:
    """(N, 2) float64 [nll(x | y), code_nll] of reference images: what ``OutlierReference.from_scores``
    takes."""
    return torch.stack([given_nll(model, images, labels, config), code_nll(model, images, labels)], dim=1)


@torch.no_grad()
def class_nll(model: torch.nn.Module, images: Tensor, config: AuditConfig = AuditConfig()) -> Tensor:
    """nll(x | c) (B, C) in nats per image for every class c: the IWAE bound with ``config.samples`` draws."""
    model = check_cvae(model)
    check_images(model, images)
    device = module_device(model)
    eps = draw_eps(config.samples, model.config.latent_dim, config.seed)
    rows = []
    for start in range(0, images.shape[0], config.batch_size):
        x = images[start : start + config.batch_size].to(device, torch.float32)
        cols = [iwae_nll(log_weights(model, x, c, eps)) for c in range(model.config.num_classes)]
        rows.append(torch.stack(cols, dim=1).cpu())  # (b, C)
    return torch.cat(rows) if rows else torch.zeros(0, model.config.num_classes)


@torch.no_grad()
def score(
    model: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    config: AuditConfig = AuditConfig(),
    reference: OutlierReference | None = None,
) -> AuditScores:
    """Every per-image score for ``images`` (B, C, H, W) in [-1, 1] with given ``labels`` (B,)."""
    model = check_cvae(model)
    check_images(model, images, labels)
    labels = labels.cpu().long()
    nll_all = class_nll(model, images, config).double()  # (B, C); float64 so that rows sum to 1 exactly
    posterior = torch.softmax(-nll_all, dim=1)  # uniform class prior
    p_given = posterior.gather(1, labels[:, None])[:, 0]  # (B,)
    nll = nll_all.gather(1, labels[:, None])[:, 0]
    others = nll_all.scatter(1, labels[:, None], math.inf)  # the given class masked out
    code = code_nll(model, images, labels)
    pct = None if reference is None else reference.percentile(nll, labels)
    code_pct = None if reference is None else reference.code_percentile(code, labels)
    return AuditScores(
        nll=nll,
        class_nll=nll_all,
        posterior=posterior,
        suggested=posterior.argmax(1),
        label_error=1.0 - p_given,
        margin=nll - others.min(1).values,
        code=code,
        outlier=pct,
        code_percentile=code_pct,
        outlier_score=None if reference is None else reference.outlier_score(pct, code_pct),
    )


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """The decoder mean at the posterior mean, decode(E[z | x, y], y): (B, C, H, W) in [-1, 1] (denoising)."""
    model = check_cvae(model)
    check_images(model, images, labels)
    device = module_device(model)
    mu, _ = model.encode(images.to(device, torch.float32), labels.to(device))
    return model.decode(mu, labels.to(device))


# ----------------------------------------------------------------------------- outlier reference


@dataclass(frozen=True)
class OutlierReference:
    """Per class, quantiles of nll(x | c) and of ``code_nll`` over that class's training images: turn an
    image's two scores into percentiles.

    Saved as JSON (``to_dict`` / ``from_dict``); ``config`` is the ``AuditConfig`` the scores were taken
    with (percentiles only mean something for scores estimated the same way). A reference saved before
    code quantiles existed has ``code_quantiles == ()``: its outlier score is the nll percentile alone, so
    a resumed audit keeps scoring as it started.
    """

    quantiles: tuple[tuple[float, ...], ...]  # per class: nll at probabilities 0, 1/(Q-1), ..., 1; () if none
    counts: tuple[int, ...]  # per class: the number of training images behind its quantiles
    config: AuditConfig  # how those scores were estimated
    code_quantiles: tuple[tuple[float, ...], ...] = ()  # per class: code_nll quantiles, like ``quantiles``

    @classmethod
    def fit(
        cls,
        nll: Tensor,
        labels: Tensor,
        num_classes: int,
        config: AuditConfig,
        code: Tensor | None = None,
        points: int = 101,
    ) -> OutlierReference:
        """Quantiles at ``points`` evenly spaced probabilities of ``nll`` (N,) and ``code`` (N,) per class."""
        check_int("points", points, 2)
        check_labels(labels, num_classes)
        counts = tuple(int((labels == c).sum()) for c in range(num_classes))
        code_q = () if code is None else _class_quantiles(code, labels, num_classes, points)
        return cls(_class_quantiles(nll, labels, num_classes, points), counts, config, code_q)

    @classmethod
    def from_scores(
        cls, scores: Tensor, labels: Tensor, num_classes: int, config: AuditConfig
    ) -> OutlierReference:
        """``fit`` on ``reference_scores``' (R, 2) [nll, code_nll] columns."""
        return cls.fit(scores[:, 0], labels, num_classes, config, code=scores[:, 1])

    def percentile(self, nll: Tensor, labels: Tensor) -> Tensor:
        """Percentile 0..100 (float64, (B,)) of each ``nll`` in its class; NaN for a class without data."""
        return _percentile(self.quantiles, nll, labels)

    def code_percentile(self, code: Tensor, labels: Tensor) -> Tensor | None:
        """Percentile 0..100 of each ``code_nll`` in its class; None for a reference without codes."""
        return _percentile(self.code_quantiles, code, labels) if self.code_quantiles else None

    @staticmethod
    def outlier_score(nll_percentile: Tensor, code_percentile: Tensor | None) -> Tensor:
        """The outlier score 0..100: the larger of the two percentiles (the nll one alone without codes)."""
        return nll_percentile if code_percentile is None else torch.maximum(nll_percentile, code_percentile)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, numbers and the config's fields)."""
        return {
            "quantiles": [list(q) for q in self.quantiles],
            "code_quantiles": [list(q) for q in self.code_quantiles],
            "counts": list(self.counts),
            "config": asdict(self.config),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutlierReference:
        """Rebuild from ``to_dict``; ValueError naming what is missing or inconsistent."""
        missing = sorted({"quantiles", "counts", "config"} - set(d))
        if missing:
            raise ValueError(
                f"outlier reference lacks {', '.join(missing)}; valid: quantiles, counts, config"
            )
        quantiles = tuple(tuple(float(v) for v in q) for q in d["quantiles"])
        code_q = tuple(tuple(float(v) for v in q) for q in d.get("code_quantiles") or ())
        counts = tuple(int(n) for n in d["counts"])
        for name, qs in (("quantile", quantiles), ("code quantile", code_q)):
            wrong_count = len(qs) != len(counts) and (name == "quantile" or len(qs) > 0)
            if wrong_count or any(list(q) != sorted(q) for q in qs):
                raise ValueError(
                    f"outlier reference has {len(qs)} {name} lists for {len(counts)} classes; "
                    "valid: one non-decreasing list per class"
                )
        try:
            config = AuditConfig(**d["config"])
        except TypeError as e:
            raise ValueError(f"outlier reference config {d['config']!r} invalid: {e}") from None
        return cls(quantiles, counts, config, code_q)


def _class_quantiles(
    values: Tensor, labels: Tensor, num_classes: int, points: int
) -> tuple[tuple[float, ...], ...]:
    """Per class, ``values``' quantiles at ``points`` evenly spaced probabilities; () for an absent class."""
    probs = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    out = []
    for c in range(num_classes):
        v = values[labels == c].double()
        out.append(tuple(torch.quantile(v, probs).tolist()) if v.numel() else ())
    return tuple(out)


def _percentile(quantiles: tuple[tuple[float, ...], ...], values: Tensor, labels: Tensor) -> Tensor:
    """Percentile 0..100 (float64, (B,)) of each value among its class's ``quantiles``; NaN for a class
    without data."""
    check_labels(labels, len(quantiles))
    out = torch.full((values.shape[0],), math.nan, dtype=torch.float64)
    for c, q in enumerate(quantiles):
        sel = labels == c
        if q and bool(sel.any()):
            xp = torch.tensor(q, dtype=torch.float64)
            out[sel] = _interp(
                values[sel].double(), xp, torch.linspace(0.0, 100.0, len(q), dtype=torch.float64)
            )
    return out


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x (xp non-decreasing), flat beyond both ends."""
    hi = torch.searchsorted(xp, x, right=True).clamp(1, xp.numel() - 1)
    lo = hi - 1
    span = (xp[hi] - xp[lo]).clamp_min(1e-12)
    t = ((x - xp[lo]) / span).clamp(0.0, 1.0)
    return fp[lo] + t * (fp[hi] - fp[lo])
