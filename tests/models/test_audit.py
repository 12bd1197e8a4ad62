"""Audit scores: exact densities, IWAE bound behaviour, determinism, and a tiny trained model's verdicts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models import CGAN, CVAE, CGANConfig, CVAEConfig, audit
from models.audit import (
    AuditConfig,
    OutlierReference,
    class_nll,
    code_nll,
    draw_eps,
    given_nll,
    iwae_nll,
    log_prior,
    log_weights,
    reconstruct,
    reference_scores,
    score,
)

VARIANTS = [
    dict(arch="mlp", likelihood="gaussian", prior="standard"),
    dict(arch="mlp", likelihood="bernoulli", prior="class_gaussian"),
    dict(arch="conv", likelihood="gaussian", prior="class_gaussian"),
    dict(arch="conv", likelihood="bernoulli", prior="standard"),
    dict(arch="conv", likelihood="gaussian", prior="class_mixture"),
]


def tiny(num_classes: int = 3, **kw) -> CVAE:
    """A seeded 8x8 CVAE small enough to score thousands of samples in milliseconds."""
    torch.manual_seed(0)
    cfg = dict(image_size=8, hidden=32, latent_dim=4, conv_width=8, embed_dim=4, num_classes=num_classes)
    return CVAE(CVAEConfig(**{**cfg, **kw})).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=g) * 2 - 1  # (B, 1, 8, 8) in [-1, 1]


def fitted(model: CVAE) -> CVAE:
    """Fit the class prior to random images so that it differs from N(0, I)."""
    if model.config.prior != "standard":
        model.fit_prior(images(60, seed=5), torch.arange(60) % model.config.num_classes)
    return model


# ----------------------------------------------------------------------------- densities and the bound


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_scores_are_deterministic_for_a_seed_and_independent_of_the_batch(variant):
    model = fitted(tiny(**variant))
    x, y = images(7), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    cfg = AuditConfig(samples=8, seed=3, batch_size=7)
    a, b = score(model, x, y, cfg), score(model, x, y, cfg)
    assert torch.equal(a.class_nll, b.class_nll) and torch.isfinite(a.class_nll).all()
    other_seed = score(model, x, y, AuditConfig(samples=8, seed=4))
    assert not torch.allclose(a.class_nll, other_seed.class_nll)
    small_batches = class_nll(model, x, AuditConfig(samples=8, seed=3, batch_size=2))
    torch.testing.assert_close(small_batches.double(), a.class_nll, rtol=1e-5, atol=1e-4)
    alone = class_nll(model, x[4:5], cfg)  # one image scored alone gets its row of the batch
    torch.testing.assert_close(alone[0].double(), a.class_nll[4], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_k1_bound_is_the_single_sample_elbo_whose_mean_is_the_training_loss(likelihood):
    """K = 1: nll = -log w; averaged over many draws, -log w = the model's own negative ELBO (recon + KL)."""
    model = tiny(likelihood=likelihood, prior="standard")
    x, y = images(5), torch.tensor([0, 1, 2, 1, 0])
    eps = draw_eps(1, 4, seed=0)
    log_w = torch.stack([log_weights(model, x[i : i + 1], int(y[i]), eps)[:, 0] for i in range(5)], 1)
    nll_k1 = score(model, x, y, AuditConfig(samples=1, seed=0)).nll
    torch.testing.assert_close(nll_k1.float(), -log_w[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(iwae_nll(log_w), -log_w[0])

    k = 4000
    eps = draw_eps(k, 4, seed=1)  # (K, D)
    per_class = {c: log_weights(model, x, c, eps) for c in range(3)}  # (K, B) each
    neg_w = torch.stack([-per_class[int(c)][:, i] for i, c in enumerate(y)], 1)  # (K, B)
    with torch.no_grad():  # the same draws through forward(): recon at z = mu + sigma eps, analytic KL
        loss = model(x.repeat(k, 1, 1, 1), y.repeat(k), noise=eps.repeat_interleave(5, 0)).loss
    tolerance = 5 * float(neg_w.std()) / math.sqrt(neg_w.numel())
    assert abs(float(neg_w.mean()) - float(loss)) < tolerance


def test_class_gaussian_log_prior_is_the_fitted_gaussian_density():
    model = tiny(prior="class_gaussian")
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    unfitted = log_prior(model, z, 1)  # before fit_prior: N(0, I)
    torch.testing.assert_close(unfitted, log_prior(tiny(prior="standard"), z, 1))
    fitted(model)
    mvn = torch.distributions.MultivariateNormal(model.prior_mean[2], scale_tril=model.prior_scale_tril[2])
    torch.testing.assert_close(log_prior(model, z, 2), mvn.log_prob(z), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(log_prior(model, z, 2), unfitted)


def test_class_mixture_log_prior_is_the_weighted_mixture_density():
    model = tiny(prior="class_mixture", prior_components=2)
    model.fit_prior(images(90, seed=5), torch.arange(90) % 2)  # 45 images per class: 2 components
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    w, means, trils = model.prior_weights[1], model.prior_means[1], model.prior_scale_trils[1]
    assert (w > 0).all()
    dens = sum(
        w[m] * torch.distributions.MultivariateNormal(means[m], scale_tril=trils[m]).log_prob(z).exp()
        for m in range(2)
    )
    torch.testing.assert_close(log_prior(model, z, 1), dens.log(), rtol=1e-5, atol=1e-4)
    standard = log_prior(tiny(prior="standard"), z, 2)  # class 2 has no images: one N(0, I) component
    torch.testing.assert_close(log_prior(model, z, 2), standard)


def test_posterior_sums_to_one_and_the_label_scores_follow_from_it():
    model = fitted(tiny(prior="class_gaussian"))
    x, y = images(9), torch.arange(9) % 3
    s = score(model, x, y, AuditConfig(samples=4))
    torch.testing.assert_close(s.posterior.sum(1), torch.ones(9, dtype=s.posterior.dtype))
    torch.testing.assert_close(s.posterior, torch.softmax(-s.class_nll, 1))
    torch.testing.assert_close(s.nll, s.class_nll[torch.arange(9), y])
    torch.testing.assert_close(s.label_error, 1 - s.posterior[torch.arange(9), y])
    assert torch.equal(s.suggested, s.posterior.argmax(1))
    assert torch.equal(s.margin > 0, s.suggested != y)
    others = s.posterior.clone()
    others[torch.arange(9), y] = 0.0
    # margin is the log-odds of the best other class against the given one, in nats
    torch.testing.assert_close(s.margin, others.max(1).values.log() - s.posterior[torch.arange(9), y].log())
    assert s.outlier is None


def test_margin_keeps_ranking_where_one_minus_p_saturates(monkeypatch):
    """Two images whose given label has p(y | x) below float64's resolution next to 1: label_error ties at
    exactly 1.0, the log-space margin still says which label is the more certainly wrong."""
    model = tiny()
    nll = torch.tensor([[100.0, 0.0, 50.0], [300.0, 0.0, 50.0]], dtype=torch.float64)  # (B, C)
    monkeypatch.setattr(audit, "class_nll", lambda *a, **k: nll)
    s = score(model, images(2), torch.tensor([0, 0]), AuditConfig(samples=1))
    assert s.label_error.tolist() == [1.0, 1.0]
    torch.testing.assert_close(s.margin, torch.tensor([100.0, 300.0], dtype=torch.float64))


# ----------------------------------------------------------------------------- a briefly trained model

PATTERNS = torch.full((2, 1, 8, 8), -0.8)
PATTERNS[0, :, ::2, :] = 0.8  # class 0: horizontal stripes
PATTERNS[1, :, :, ::2] = 0.8  # class 1: vertical stripes


def patterns(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images alternating between the two classes, each its pattern plus N(0, 0.1^2) pixel noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = PATTERNS[y] + 0.1 * torch.randn((n, 1, 8, 8), generator=g)
    return x.clamp(-1, 1), y


@pytest.fixture(scope="module")
def trained() -> CVAE:
    """A Gaussian MLP CVAE trained for 400 Adam steps on the two stripe classes (about a second)."""
    torch.manual_seed(0)
    model = CVAE(CVAEConfig(image_size=8, num_classes=2, latent_dim=4, hidden=64, embed_dim=4))
    x, y = patterns(256, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        idx = torch.randint(0, 256, (64,), generator=g)
        loss = model(x[idx], y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_iwae_bound_tightens_with_k_on_average(variant):
    """With a poor proposal (q three nats of log-variance too wide) more samples lower the bound a lot."""
    model = fitted(tiny(**variant))
    with torch.no_grad():
        model.encoder[-1].bias[4:] += 3.0  # the log-variance half of the encoder's output
    x, y = images(30), torch.arange(30) % 3
    mean_nll = {
        k: sum(float(score(model, x, y, AuditConfig(samples=k, seed=s)).nll.mean()) for s in range(8)) / 8
        for k in (1, 8, 64)
    }
    assert mean_nll[1] > mean_nll[8] + 5 > mean_nll[64] + 6


def test_trained_model_flags_noise_as_outlier_and_a_swapped_label(trained):
    cfg = AuditConfig(samples=16)
    train_x, train_y = patterns(256, seed=0)
    ref = OutlierReference.fit(score(trained, train_x, train_y, cfg).nll, train_y, 2, cfg)
    x, y = patterns(20, seed=3)
    noise = torch.rand((4, 1, 8, 8), generator=torch.Generator().manual_seed(4)) * 2 - 1
    clean = score(trained, x, y, cfg, ref)
    odd = score(trained, noise, torch.tensor([0, 1, 0, 1]), cfg, ref)
    assert odd.nll.min() > clean.nll.max()  # noise is less likely than every in-class image
    assert (odd.outlier == 100).all()
    assert 10 < float(clean.outlier.median()) < 90  # held-out in-class images sit inside their class
    assert float(clean.label_error.max()) < 0.05 and torch.equal(clean.suggested, y)
    swapped = score(trained, x[:4], 1 - y[:4], cfg, ref)  # labels of the other class
    assert (swapped.label_error > 0.95).all() and torch.equal(swapped.suggested, y[:4])
    assert (swapped.margin > 0.9).all()


@pytest.mark.parametrize("variant", VARIANTS[1:3], ids=lambda v: "-".join(v.values()))
def test_reference_scores_are_the_audits_own_label_scores_at_a_tenth_of_the_cost(variant):
    model = fitted(tiny(**variant))
    x, y = images(9), torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1])
    cfg = AuditConfig(samples=8, seed=3, batch_size=4)
    full = score(model, x, y, cfg)
    torch.testing.assert_close(given_nll(model, x, y, cfg), full.nll, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(code_nll(model, x, y), full.code)
    mu, _ = model.encode(x, y)
    torch.testing.assert_close(full.code[4], -log_prior(model, mu[4:5], 0)[0].double())
    torch.testing.assert_close(reference_scores(model, x, y, cfg)[:, 1], full.code)


def test_the_code_percentile_flags_what_the_decoder_reconstructs_well(trained):
    """A constant image is easy to reconstruct but unlike any training code: the outlier score, the larger of
    the two percentiles, ranks it above every held-out in-class image."""
    cfg = AuditConfig(samples=16)
    train_x, train_y = patterns(256, seed=0)
    scores = reference_scores(trained, train_x, train_y, cfg)
    ref = OutlierReference.from_scores(scores, train_y, 2, cfg)
    x, y = patterns(20, seed=3)
    clean = score(trained, x, y, cfg, ref)
    flat = score(trained, torch.full((2, 1, 8, 8), 0.3), torch.tensor([0, 1]), cfg, ref)
    assert flat.code.min() > clean.code.max() and (flat.code_percentile == 100).all()
    assert flat.outlier_score.min() > clean.outlier_score.max()
    torch.testing.assert_close(clean.outlier_score, torch.maximum(clean.outlier, clean.code_percentile))
    assert 10 < float(clean.code_percentile.median()) < 90


def test_reconstruct_denoises_in_class_images(trained):
    x, y = patterns(20, seed=5)
    noisy = (x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))).clamp(-1, 1)
    out = reconstruct(trained, noisy, y)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert float((out - x).pow(2).mean()) < 0.5 * float((noisy - x).pow(2).mean())


# ----------------------------------------------------------------------------- the reference and bad input


def test_outlier_reference_percentiles_and_json_round_trip():
    nll = torch.cat([torch.arange(100.0), torch.arange(100.0) * 10])  # class 0: 0..99, class 1: 0..990
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    ref = OutlierReference.fit(nll, labels, 3, AuditConfig(samples=4))
    pct = ref.percentile(torch.tensor([49.5, -5.0, 1000.0, 495.0, 1.0]), torch.tensor([0, 0, 0, 1, 2]))
    torch.testing.assert_close(pct[:4], torch.tensor([50.0, 0.0, 100.0, 50.0], dtype=torch.float64))
    assert math.isnan(pct[4])  # class 2 had no training images
    back = OutlierReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back == ref and back.counts == (100, 100, 0) and back.config.samples == 4
    assert ref.code_percentile(nll[:5], labels[:5]) is None  # fitted without codes: the nll percentile alone
    assert ref.outlier_score(pct, None) is pct
    coded = OutlierReference.fit(nll, labels, 3, AuditConfig(samples=4), code=-nll)
    cpct = coded.code_percentile(torch.tensor([-49.5, -495.0]), torch.tensor([0, 1]))
    torch.testing.assert_close(cpct, torch.tensor([50.0, 50.0], dtype=torch.float64))
    assert OutlierReference.from_dict(json.loads(json.dumps(coded.to_dict()))) == coded
    old = {k: v for k, v in ref.to_dict().items() if k != "code_quantiles"}  # saved before codes existed
    assert OutlierReference.from_dict(old) == ref
    with pytest.raises(ValueError, match="1 code quantile lists for 3 classes"):
        OutlierReference.from_dict({**coded.to_dict(), "code_quantiles": [[1.0]]})
    with pytest.raises(ValueError, match="lacks counts"):
        OutlierReference.from_dict({"quantiles": [], "config": {}})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: score(m, images(2), torch.tensor([0, 3])), "unknown class 3; valid: 0..2"),
        (lambda m: score(m, torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])), r"valid: \(B, 1, 8, 8\)"),
        (lambda m: score(m, images(2), torch.tensor([0])), "1 labels for 2 images"),
        (lambda m: reconstruct(m, torch.zeros(2, 1, 16, 16), torch.tensor([0, 1])), r"\(2, 1, 16, 16\)"),
        (lambda m: AuditConfig(samples=0), "samples=0; valid: an integer >= 1"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny())


def test_a_cgan_is_refused():
    cgan = CGAN(CGANConfig(image_size=8, num_classes=3))
    with pytest.raises(ValueError, match="audit needs a cvae model, got a CGAN"):
        score(cgan, images(2), torch.tensor([0, 1]))
