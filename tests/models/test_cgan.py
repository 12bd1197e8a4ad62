"""CGAN: configs, shapes at every size, spectral norm, hinge losses, EMA, DiffAugment, training."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from models import CGAN, SUPPORTED_SIZES, CGANConfig, d_loss, diff_augment, g_loss
from tests.models.conftest import assert_seeded_sampling

CASES = list(itertools.product(SUPPORTED_SIZES, (1, 3), ("mlp", "conv")))


def tiny(size: int = 8, channels: int = 1, arch: str = "auto", **kw) -> CGAN:
    """A seeded CGAN small enough for 64x64 RGB to run in milliseconds."""
    torch.manual_seed(0)
    cfg = dict(image_size=size, channels=channels, arch=arch, z_dim=8, g_hidden=32, d_hidden=32)
    return CGAN(CGANConfig(**{**cfg, "conv_width": 8, "embed_dim": 4, **kw}))


def batch(size: int, channels: int, n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, channels, size, size), generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]
    return x, torch.randint(0, 10, (n,), generator=g)


def flat_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("image_size", 48, ["image_size=48", "8, 16, 28, 32, 64"]),
        ("channels", 4, ["channels=4", "1, 3"]),
        ("arch", "transformer", ["arch='transformer'", "mlp, conv, auto"]),
        ("ema_decay", 1.5, ["ema_decay=1.5", "[0.0, 1.0]"]),
        ("diffaug", "yes", ["diffaug='yes'", "true, false"]),
        ("z_dim", 0, ["z_dim=0", ">= 1"]),
        ("cutout", 2.0, ["cutout=2.0", "[0.0, 1.0]"]),
    ],
)
def test_bad_config_value_names_value_and_options(field, value, fragments):
    with pytest.raises(ValueError) as info:
        CGANConfig(**{field: value})
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("size", "arch"), [(8, "mlp"), (16, "mlp"), (28, "conv"), (32, "conv"), (64, "conv")]
)
def test_auto_arch(size, arch):
    assert CGANConfig(image_size=size).resolved_arch == arch


@pytest.mark.parametrize(("size", "channels", "arch"), CASES)
def test_shapes_range_and_seeded_sampling(size, channels, arch):
    model = tiny(size, channels, arch)
    x, y = batch(size, channels)
    fake = model.generator(torch.randn(6, 8), y)
    assert fake.shape == (6, channels, size, size)
    assert fake.min() >= -1 and fake.max() <= 1
    assert model.discriminator(x, y).shape == (6,)
    assert_seeded_sampling(model, channels, size)
    assert model.noise_dim == 8


def test_sample_uses_ema_in_eval_mode_and_temperature_scales_noise():
    model = tiny().train()
    assert not model.generator_ema.training and model.generator.training
    assert not any(p.requires_grad for p in model.generator_ema.parameters())
    labels = torch.tensor([2, 2, 5])
    eps = torch.randn(3, 8)
    expected = model.generator_ema.eval()(0.5 * eps, labels)
    torch.testing.assert_close(model.sample(labels, noise=eps, temperature=0.5), expected)
    cold = model.sample(labels, temperature=0.0)
    assert torch.equal(cold[0], cold[1]) and not torch.allclose(
        cold[0], cold[2]
    )  # z = 0: one image per class
    with pytest.raises(ValueError, match="unknown class 10; valid: 0..9"):
        model.sample(torch.tensor([10]))


def test_noise_scale_scales_the_noise_on_top_of_temperature_and_is_checked():
    plain, scaled = tiny(), tiny(noise_scale=0.5)
    labels, eps = torch.tensor([1, 2, 3]), torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    expected = plain.sample(labels, noise=0.5 * 0.8 * eps)
    assert torch.equal(scaled.sample(labels, noise=eps, temperature=0.8), expected)
    assert not torch.equal(scaled.sample(labels, noise=eps), plain.sample(labels, noise=eps))
    for bad in (0.0, -1.0, float("nan"), 11.0):
        with pytest.raises(ValueError, match="noise_scale"):
            tiny(noise_scale=bad)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_discriminator_is_spectrally_normed_projection_without_batchnorm(arch):
    model = tiny(16, 3, arch)
    D = model.discriminator
    weighted = [m for m in D.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding))]
    assert len(weighted) >= 3
    assert all(parametrize.is_parametrized(m, "weight") for m in weighted)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
    x, y = batch(16, 3, n=4)
    for _ in range(30):  # power iteration converges in training-mode forwards
        D(x, y)
    for m in weighted:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
    # projection: the same image scores differently under different labels
    assert not torch.allclose(D(x, torch.zeros(4, dtype=torch.long)), D(x, torch.ones(4, dtype=torch.long)))


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_generator_has_conditional_batchnorm_and_uses_labels(arch):
    model = tiny(16, 1, arch)
    G = model.generator
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.affine for m in norms)
    with torch.no_grad():  # make the per-class gamma/beta differ
        for m in G.modules():
            if isinstance(m, nn.Embedding):
                m.weight.normal_()
    z = torch.randn(4, 8)
    assert not torch.allclose(G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.full((4,), 7)))


def test_losses_are_the_hinge_losses():
    model = tiny()
    G, D = model.generator, model.discriminator.eval()  # eval: freeze the spectral-norm power iteration
    x, y = batch(8, 1, n=8)
    z = torch.randn(8, 8)
    out = d_loss(G, D, x, y, z, augment=False)
    with torch.no_grad():
        fake = G(z, y)
        expected = F.relu(1 - D(x, y)).mean() + F.relu(1 + D(fake, y)).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.real_score, D(x, y).mean().detach())
    assert out.loss.grad_fn is not None and all(p.grad is None for p in G.parameters())
    gen = g_loss(G, D, y, z, augment=False)
    torch.testing.assert_close(gen.loss, -D(gen.fake, y).mean())
    assert gen.fake.shape == (8, 1, 8, 8) and gen.fake.requires_grad


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("augment", [False, True])
def test_training_pattern_updates_g_d_and_ema(arch, augment):
    model = tiny(8, 1, arch).train()
    G, D = model.generator, model.discriminator
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.9))
    g0, d0 = flat_params(G), flat_params(D)
    x, y = batch(8, 1, n=16)
    for _ in range(4):
        opt_g.zero_grad()
        out = d_loss(G, D, x, y, torch.randn(16, 8), augment=augment)
        opt_d.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in G.parameters())  # fake made without G's graph
        opt_d.step()
        D.requires_grad_(False)
        gen = g_loss(G, D, y, torch.randn(16, 8), augment=augment)
        opt_g.zero_grad()
        gen.loss.backward()
        assert all(p.grad is not None for p in G.parameters())
        opt_g.step()
        D.requires_grad_(True)
        model.update_ema()
    assert torch.isfinite(out.loss) and torch.isfinite(gen.loss)
    assert not torch.allclose(flat_params(G), g0) and not torch.allclose(flat_params(D), d0)
    ema = flat_params(model.generator_ema)
    assert not torch.allclose(ema, g0) and not torch.allclose(ema, flat_params(G))
    assert int(model.ema_updates) == 4


def test_update_ema_math_and_buffer_copy():
    model = tiny(ema_decay=0.9)
    G = model.generator
    G.train()(torch.randn(16, 8), torch.arange(16) % 10)  # move the BatchNorm running statistics
    old = flat_params(model.generator_ema)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    model.ema_updates.fill_(10**6)  # past warm-up: decay = ema_decay
    model.update_ema()
    torch.testing.assert_close(flat_params(model.generator_ema), 0.9 * old + 0.1 * flat_params(G))
    for ema_b, b in zip(model.generator_ema.buffers(), G.buffers(), strict=True):
        assert torch.equal(ema_b, b)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_standing_stats_measure_the_ema_generators_own_activations(arch):
    model = tiny(size=16, channels=3, arch=arch, ema_decay=0.9)
    G, ema = model.generator, model.generator_ema
    G.train()(torch.randn(32, 8), torch.arange(32) % 10)  # G's statistics, then weights that moved away
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.ema_updates.fill_(10**6)
    model.update_ema()  # the EMA now holds averaged weights and G's (old) statistics
    first = ema.norms[0].bn  # the BatchNorm behind the first hidden layer
    inputs = []
    hook = first.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    model.standing_stats(batches=4, batch_size=50, seed=3)
    hook.remove()
    per_batch = [x.transpose(0, 1).flatten(1) for x in inputs]  # 4 x (F, positions of one batch)
    # a cumulative average (momentum None) of the 4 batches' means and unbiased variances
    torch.testing.assert_close(first.running_mean, torch.stack([x.mean(1) for x in per_batch]).mean(0))
    torch.testing.assert_close(first.running_var, torch.stack([x.var(1) for x in per_batch]).mean(0))
    assert not ema.training and first.momentum == 0.1  # back in eval mode, momentum restored
    again = tiny(size=16, channels=3, arch=arch)
    again.load_state_dict(model.state_dict())
    again.standing_stats(batches=4, batch_size=50, seed=3)
    for a, b in zip(again.generator_ema.buffers(), ema.buffers(), strict=True):
        assert torch.equal(a, b)  # deterministic for a seed
    with pytest.raises(ValueError, match="batches"):
        model.standing_stats(batches=0)


def test_mode_seeking_pairs_labels_and_adds_the_inverse_distance_ratio():
    plain, seeking = tiny(size=16, arch="conv"), tiny(size=16, arch="conv", mode_seeking=2.0)
    seeking.load_state_dict(plain.state_dict())  # same G and D: the losses differ by the term only
    labels, z = torch.tensor([1, 2, 3, 4, 5, 6, 7]), torch.randn(7, 8)
    paired = torch.tensor([1, 2, 3, 1, 2, 3, 7])  # i and i + 3 share a label; the odd last one keeps its own
    base = g_loss(plain.generator, plain.discriminator.eval(), paired, z)
    out = g_loss(seeking.generator, seeking.discriminator.eval(), labels, z)
    torch.testing.assert_close(out.fake, base.fake)  # G saw the paired labels
    ratio = (base.fake[:3] - base.fake[3:6]).abs().mean() / (z[:3] - z[3:6]).abs().mean()
    torch.testing.assert_close(out.loss, base.loss + 2.0 / (ratio + 1e-5))
    # its gradient pushes a pair's images apart: one G step on the term alone raises the ratio
    G = seeking.generator.train()
    opt = torch.optim.SGD(G.parameters(), lr=0.05)
    gap = (out.fake[:3] - out.fake[3:6]).abs().mean() / (z[:3] - z[3:6]).abs().mean()
    opt.zero_grad()
    (2.0 / (gap + 1e-5)).backward()
    opt.step()
    after = G(z, paired)
    assert (after[:3] - after[3:6]).abs().mean() > (base.fake[:3] - base.fake[3:6]).abs().mean()
    with pytest.raises(ValueError, match="mode_seeking"):
        tiny(mode_seeking=-1.0)


def test_update_ema_warm_up_follows_g_early():
    model = tiny(ema_decay=0.999)
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    old = flat_params(model.generator_ema)
    model.update_ema()  # first update: decay = min(0.999, 1/10)
    torch.testing.assert_close(
        flat_params(model.generator_ema), 0.1 * old + 0.9 * flat_params(model.generator)
    )


def test_training_pattern_with_ddp_wrapped_modules(tmp_path):
    """The trainer passes DDP-wrapped G and D; the loop runs and update_ema accepts the wrapper."""
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tiny()
        G = nn.parallel.DistributedDataParallel(model.generator)
        D = nn.parallel.DistributedDataParallel(model.discriminator)
        opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
        x, y = batch(8, 1, n=8)
        for _ in range(3):
            out = d_loss(G, D, x, y, torch.randn(8, 8))
            opt_d.zero_grad()
            out.loss.backward()
            opt_d.step()
            D.requires_grad_(False)
            gen = g_loss(G, D, y, torch.randn(8, 8))
            opt_g.zero_grad()
            gen.loss.backward()
            opt_g.step()
            D.requires_grad_(True)
            model.update_ema(G)
        assert not torch.allclose(flat_params(model.generator_ema), flat_params(model.generator))
    finally:
        dist.destroy_process_group()


def test_diff_augment_translation_shifts_each_sample_by_at_most_the_ratio():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 8, 8, requires_grad=True)
    out = diff_augment(x, translation=0.125, cutout=0.0)
    assert out.shape == x.shape
    shifted = 0
    for i in range(32):
        matches = [
            (dy, dx)
            for dy, dx in itertools.product((-1, 0, 1), repeat=2)
            if torch.equal(out[i, :, 1:-1, 1:-1], x[i, :, 1 + dy : 7 + dy, 1 + dx : 7 + dx])
        ]
        assert matches, f"sample {i} is not a shift by <= 1 pixel"
        shifted += matches[0] != (0, 0)
    assert shifted > 16  # 8 of 9 shifts move the image
    out.sum().backward()
    assert x.grad is not None and x.grad.sum().item() == pytest.approx(32 * 3 * 64)
    torch.testing.assert_close(diff_augment(x, 0.0, 0.0), x)


def test_diff_augment_cutout_zeros_one_square_per_sample():
    torch.manual_seed(0)
    out = diff_augment(torch.ones(10, 2, 16, 16), translation=0.0, cutout=0.5)
    zeros = (out == 0).sum(dim=(2, 3))  # (B, C)
    assert torch.equal(zeros, torch.full((10, 2), 64))
