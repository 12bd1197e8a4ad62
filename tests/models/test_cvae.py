"""CVAE: configs, shapes and ranges at every supported size, seeded sampling, batch independence, training."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from models import CVAE, SUPPORTED_SIZES, CVAEConfig, base_resolution
from tests.models.conftest import assert_seeded_sampling

CASES = list(itertools.product(SUPPORTED_SIZES, (1, 3), ("mlp", "conv")))


def tiny(size: int = 8, channels: int = 1, arch: str = "auto", **kw) -> CVAE:
    """A seeded CVAE small enough for 64x64 RGB to run in milliseconds."""
    torch.manual_seed(0)
    cfg = dict(
        image_size=size, channels=channels, arch=arch, hidden=32, latent_dim=4, conv_width=8, embed_dim=4
    )
    return CVAE(CVAEConfig(**{**cfg, **kw}))


def batch(size: int, channels: int, n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, channels, size, size), generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize(
    ("size", "arch", "base"),
    [
        (8, "mlp", (4, 1)),
        (16, "mlp", (4, 2)),
        (28, "conv", (7, 2)),
        (32, "conv", (4, 3)),
        (64, "conv", (4, 4)),
    ],
)
def test_auto_arch_and_base_resolution(size, arch, base):
    assert CVAEConfig(image_size=size).resolved_arch == arch
    assert CVAEConfig(image_size=size, arch="conv").resolved_arch == "conv"
    assert CVAEConfig(image_size=size, arch="mlp").resolved_arch == "mlp"
    assert base_resolution(size) == base


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("image_size", 12, ["image_size=12", "8, 16, 28, 32, 64"]),
        ("image_size", True, ["image_size=True", "8, 16, 28, 32, 64"]),
        ("channels", 2, ["channels=2", "1, 3"]),
        ("arch", "resnet", ["arch='resnet'", "mlp, conv, auto"]),
        ("likelihood", "poisson", ["likelihood='poisson'", "gaussian, bernoulli"]),
        ("latent_dim", 0, ["latent_dim=0", ">= 1"]),
        ("num_classes", 1, ["num_classes=1", ">= 2"]),
        ("hidden", 2.5, ["hidden=2.5", "integer"]),
        ("beta", -1.0, ["beta=-1.0", "[0.0, inf]"]),
    ],
)
def test_bad_config_value_names_value_and_options(field, value, fragments):
    with pytest.raises(ValueError) as info:
        CVAEConfig(**{field: value})
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(("size", "channels", "arch"), CASES)
def test_forward_shapes_range_and_loss_parts(size, channels, arch):
    model = tiny(size, channels, arch)
    x, y = batch(size, channels)
    out = model(x, y, kl_weight=0.5)
    assert out.x_hat.shape == (6, channels, size, size)
    assert out.x_hat.min() >= -1 and out.x_hat.max() <= 1
    assert out.loss.shape == out.recon.shape == out.kl.shape == ()
    assert out.kl.item() >= 0
    torch.testing.assert_close(out.loss, out.recon + 0.5 * model.config.beta * out.kl)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("size", "channels", "arch"), CASES)
def test_sample_shapes_range_and_seeded_determinism(size, channels, arch):
    model = tiny(size, channels, arch)
    assert_seeded_sampling(model, channels, size)
    assert model.noise_dim == 4


def test_sample_noise_and_temperature():
    model = tiny()
    labels = torch.tensor([1, 1, 2])
    eps = torch.randn(3, model.noise_dim, generator=torch.Generator().manual_seed(3))
    drawn = model.sample(labels, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.sample(labels, noise=eps), drawn)  # noise = the generator's draw
    torch.testing.assert_close(
        model.sample(labels, noise=eps, temperature=0.5), model.decode(0.5 * eps, labels)
    )
    cold = model.sample(labels, generator=torch.Generator().manual_seed(3), temperature=0.0)
    assert torch.equal(cold[0], cold[1]) and not torch.allclose(
        cold[0], cold[2]
    )  # z = 0: one image per class


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": torch.tensor([0, 10])}, "unknown class 10; valid: 0..9"),
        ({"labels": torch.tensor([-1])}, "unknown class -1; valid: 0..9"),
        ({"labels": torch.tensor([[1]])}, "1-D integer tensor"),
        ({"labels": torch.tensor([1.0])}, "1-D integer tensor"),
        ({"labels": torch.tensor([1]), "temperature": -0.5}, "temperature=-0.5"),
        ({"labels": torch.tensor([1]), "noise": torch.zeros(1, 5)}, "valid: (1, 4)"),
    ],
)
def test_sample_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError) as info:
        tiny().sample(**kwargs)
    assert message in str(info.value)


def test_forward_uses_given_noise():
    model = tiny()
    x, y = batch(8, 1)
    eps = torch.randn(6, 4)
    assert torch.equal(model(x, y, noise=eps).loss, model(x, y, noise=eps).loss)
    assert not torch.equal(model(x, y, noise=eps).loss, model(x, y, noise=eps + 1).loss)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_two_half_batches_equal_one_batch(arch, likelihood):
    """No batch-dependent layers: DDP averaging of two B/2 gradients equals the B-batch gradient."""
    model = tiny(16, 3, arch, likelihood=likelihood)
    x, y = batch(16, 3, n=8)
    eps = torch.randn(8, 4)

    def grads(sl: slice) -> list[torch.Tensor]:
        model.zero_grad()
        model(x[sl], y[sl], noise=eps[sl]).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    full = grads(slice(0, 8))
    halves = [(a + b) / 2 for a, b in zip(grads(slice(0, 4)), grads(slice(4, 8)), strict=True)]
    for g_full, g_half in zip(full, halves, strict=True):
        torch.testing.assert_close(g_full, g_half, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    ("likelihood", "arch"), [("gaussian", "mlp"), ("bernoulli", "mlp"), ("gaussian", "conv")]
)
def test_loss_decreases_with_adam(likelihood, arch):
    model = tiny(8, 1, arch, likelihood=likelihood)
    templates, _ = batch(8, 1, n=10, seed=1)
    y = torch.arange(32) % 10
    x = templates.sign()[y]  # (32, 1, 8, 8): one crisp random pattern per class
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    losses = []
    for _ in range(50):
        out = model(x, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.2 * abs(first), (first, last)


def test_gaussian_sigma_is_learned_and_floored():
    model = tiny(min_log_sigma=-2.0)
    assert model.sigma().item() == pytest.approx(1.0)
    with torch.no_grad():
        model.log_sigma.fill_(-10.0)
    assert model.sigma().item() == pytest.approx(torch.exp(torch.tensor(-2.0)).item())


# ----------------------------------------------------------------------------- the class-Gaussian prior


def test_class_gaussian_prior_matches_the_aggregate_posterior_moments():
    model = tiny(prior="class_gaussian").eval()
    assert torch.equal(model.prior_mean, torch.zeros(10, 4))  # N(0, I) until fitted
    g = torch.Generator().manual_seed(1)
    x = torch.rand(400, 1, 8, 8, generator=g) * 2 - 1
    y = torch.arange(4).repeat_interleave(100)  # classes 4..9 have no images
    model.fit_prior(x, y)
    mu, logvar = model.encode(x, y)
    for c in range(4):
        sel = y == c
        assert torch.allclose(model.prior_mean[c], mu[sel].mean(0), atol=1e-5)
        cov = torch.cov(mu[sel].T.double()) + torch.diag(logvar[sel].double().exp().mean(0))
        shrunk = (100 / 104) * cov + (4 / 104) * torch.eye(4, dtype=torch.float64)  # D / (n + D) = 4 / 104
        fitted = model.prior_scale_tril[c].double() @ model.prior_scale_tril[c].double().T
        assert torch.allclose(fitted, shrunk, atol=1e-5)
    assert torch.equal(model.prior_mean[7], torch.zeros(4))  # untouched
    assert torch.equal(model.prior_scale_tril[7], torch.eye(4))
    # sample() decodes z = mean + L (prior_scale * eps)
    eps = torch.randn(3, 4, generator=g)
    labels = torch.tensor([0, 2, 9])
    z = model.prior_mean[labels] + torch.einsum("bij,bj->bi", model.prior_scale_tril[labels], eps)
    assert torch.equal(model.sample(labels, noise=eps), model.decode(z, labels))


def test_prior_scale_scales_the_noise_and_is_checked():
    plain, scaled = tiny(), tiny(prior_scale=0.5)
    eps = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 3, 4])
    assert torch.equal(scaled.sample(labels, noise=eps), plain.sample(labels, noise=0.5 * eps))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="prior_scale"):
            tiny(prior_scale=bad)
    with pytest.raises(ValueError, match="prior='gaussian'"):
        tiny(prior="gaussian")
    with pytest.raises(ValueError, match="fit_prior needs prior in .*'class_mixture'.*not 'standard'"):
        plain.fit_prior(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))


def test_class_gaussian_prior_survives_a_checkpoint_and_old_configs_load(tmp_path):
    from models.checkpoint import load_checkpoint, save_checkpoint

    model = tiny(prior="class_gaussian").eval()
    x, y = batch(8, 1, n=40)
    model.fit_prior(x, y)
    save_checkpoint(model, tmp_path / "ck", classes=[str(i) for i in range(10)], data={})
    loaded = load_checkpoint(tmp_path / "ck").model
    assert torch.equal(loaded.prior_scale_tril, model.prior_scale_tril)
    labels = torch.tensor([0, 5])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(loaded.sample(labels, generator=g()), model.sample(labels, generator=g()))
    # a checkpoint written before the prior existed: no "prior" in config.json, no prior buffers
    import json

    old = tiny()
    save_checkpoint(old, tmp_path / "old", classes=[str(i) for i in range(10)], data={})
    cfg_path = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("prior", "prior_scale"):
        cfg["config"].pop(key)
    cfg_path.write_text(json.dumps(cfg))
    again = load_checkpoint(tmp_path / "old").model
    assert again.config.prior == "standard"
    assert torch.equal(again.sample(labels, generator=g()), old.sample(labels, generator=g()))


# ----------------------------------------------------------------------------- the class-mixture prior


def test_fit_mixture_recovers_separated_clusters_deterministically():
    from models.cvae import _fit_mixture

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 2, generator=g, dtype=torch.float64) * 0.5 + torch.tensor(
        [-4.0, 0.0], dtype=torch.float64
    )
    b = torch.randn(900, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.2], dtype=torch.float64)
    b = b + torch.tensor([4.0, 1.0], dtype=torch.float64)
    extra = 0.01 * torch.eye(2, dtype=torch.float64)
    weights, means, trils = _fit_mixture(torch.cat([a, b]), 2, extra)
    order = means[:, 0].argsort()  # component on the left first
    weights, means, covs = weights[order], means[order], (trils @ trils.transpose(1, 2))[order]
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(
        means, torch.tensor([[-4.0, 0.0], [4.0, 1.0]], dtype=torch.float64), atol=0.1, rtol=0
    )
    want = torch.stack(
        [torch.diag(torch.tensor(v, dtype=torch.float64)) for v in ([0.25, 0.25], [1.0, 0.04])]
    )
    torch.testing.assert_close(covs, want + extra, atol=0.1, rtol=0.15)
    again = _fit_mixture(torch.cat([a, b]), 2, extra)
    assert torch.equal(again[1][order], means)


def test_class_mixture_prior_fits_components_by_class_size_and_samples_by_weight():
    model = tiny(prior="class_mixture", prior_components=3).eval()
    assert model.noise_dim == 4 + 2  # z, and two dimensions whose angle picks the component
    g = torch.Generator().manual_seed(1)
    x = torch.rand(130, 1, 8, 8, generator=g) * 2 - 1
    y = torch.cat([torch.zeros(100), torch.ones(30)]).long()  # 100 images: 3 components; 30: 1 (30 // 20)
    model.fit_prior(x, y)
    assert (model.prior_weights[0] > 0).all() and model.prior_weights[0].sum().item() == pytest.approx(1.0)
    assert model.prior_weights[1].tolist() == [1.0, 0.0, 0.0]
    mu, logvar = model.encode(x[y == 1], y[y == 1])
    cov = torch.cov(mu.T.double()) * 29 / 30 + torch.diag(logvar.double().exp().mean(0)) + 1e-4 * torch.eye(4)
    one = model.prior_scale_trils[1, 0].double()
    torch.testing.assert_close(model.prior_means[1, 0], mu.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(one @ one.T, cov, atol=1e-5, rtol=1e-4)
    assert model.prior_weights[5].tolist() == [1.0, 0.0, 0.0]  # no images: N(0, I)
    assert torch.equal(model.prior_scale_trils[5, 0], torch.eye(4)) and not model.prior_means[5].any()
    # sampling: component frequencies follow the weights; the temperature scales within a component only
    with torch.no_grad():
        model.prior_weights[0] = torch.tensor([0.2, 0.3, 0.5])
        model.prior_means[0] = torch.tensor([0.0, 10.0, 20.0])[:, None] * torch.tensor([1.0, 0, 0, 0])
    n = 6000
    eps = torch.randn(n, 6, generator=g)
    labels = torch.zeros(n, dtype=torch.long)
    comp = (model.prior_latent(eps, labels)[:, 0] / 10).round().long().clamp(0, 2)
    freq = torch.bincount(comp, minlength=3).float() / n
    torch.testing.assert_close(freq, model.prior_weights[0], atol=0.02, rtol=0)
    tril = model.prior_scale_trils[0][comp]  # (n, D, D)
    want = model.prior_means[0][comp] + torch.einsum("bij,bj->bi", tril, 0.5 * eps[:, :4])
    torch.testing.assert_close(model.prior_latent(0.5 * eps, labels), want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prior_components"):
        tiny(prior="class_mixture", prior_components=0)


def test_class_mixture_prior_survives_a_checkpoint(tmp_path):
    from models.checkpoint import load_checkpoint, save_checkpoint

    model = tiny(prior="class_mixture", prior_components=2).eval()
    x, y = batch(8, 1, n=80)
    model.fit_prior(x, y % 2)
    save_checkpoint(model, tmp_path / "ck", classes=[str(i) for i in range(10)], data={})
    loaded = load_checkpoint(tmp_path / "ck").model
    assert torch.equal(loaded.prior_weights, model.prior_weights)
    labels = torch.tensor([0, 1, 5])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(loaded.sample(labels, generator=g()), model.sample(labels, generator=g()))


@pytest.mark.parametrize(("size", "arch", "likelihood"), [(8, "mlp", "gaussian"), (28, "conv", "bernoulli")])
def test_label_guidance_extrapolates_from_the_label_free_decode_and_only_when_sampling(
    size, arch, likelihood
):
    plain = tiny(size, arch=arch, likelihood=likelihood)
    guided = CVAE(dataclasses.replace(plain.config, guidance=1.5))
    guided.load_state_dict(plain.state_dict())
    plain.eval(), guided.eval()
    eps = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 3, 7, 9])
    # by hand: raw outputs D(z, y) + w (D(z, y) - D(z, mean embedding)), then the likelihood's mean
    own = plain.decoder(torch.cat([eps, plain.embed(labels)], 1)).view(5, 1, size, size)
    free = plain.decoder(torch.cat([eps, plain.embed.weight.mean(0).expand(5, -1)], 1)).view(5, 1, size, size)
    raw = own + 1.5 * (own - free)
    want = (raw if likelihood == "gaussian" else torch.tanh(raw / 2)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.allclose(guided.sample(labels, noise=eps), want, atol=1e-6)
        assert torch.equal(plain.sample(labels, noise=eps), plain.decode(eps, labels))  # 0: the plain mean
        assert not torch.allclose(guided.sample(labels, noise=eps), plain.sample(labels, noise=eps))
    # training and likelihoods (the audit's scores) ignore it
    x, y = batch(size, 1, n=4)
    noise = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(guided(x, y, noise=noise).loss, plain(x, y, noise=noise).loss)
    with pytest.raises(ValueError, match="guidance"):
        tiny(guidance=-0.5)
