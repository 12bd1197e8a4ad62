"""Training images/s: Ray Train with 2 workers vs one plain PyTorch process, same model, same global batch.

    python -m benchmarks.training [--epochs 20] [--fashion-epochs 5]

Cases: scikit-learn's digits (8x8, 898 images), and the real Fashion-MNIST (28x28, 60,000 images, Debian's
``dataset-fashion-mnist``; its rows are skipped with the reason where the files are absent). Both runs
use the default recipe for the data (``models.recipes``).

The plain baseline runs the same step functions of ``jobs.train`` in this process (all cores, no DDP,
no Ray); both figures are the median images/s of the epochs after the first (warm-up excluded).
Target >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.common import Row, scratch_home


def recipe_batch(kind: str, dataset: str) -> int:
    """The global batch the default recipe gives ``kind`` on ``dataset``."""
    from jobs.trainer.settings import TrainSettings, resolve_settings

    return resolve_settings(TrainSettings(model=kind, dataset=dataset, name="bench"))[0].batch_size


def plain_images_per_s(kind: str, epochs: int, dataset: str = "digits", device: str = "cpu") -> float:
    """One process, all cores: the same model, data, global batch and optimizer as the trainer (the
    default recipe for the data), channels_last for conv nets as the trainer does.

    On ``device="cuda"`` it uses what ``--gpu`` uses: bf16 autocast, pinned non-blocking copies.
    """
    from torch.utils.data import DataLoader

    from jobs.data.spec import load_dataset
    from jobs.trainer.loop import gan_step, memory_format_for, step_noise_dim
    from jobs.trainer.settings import TrainSettings, model_config, resolve_settings
    from models.checkpoint import build_model

    torch.manual_seed(0)
    ds = load_dataset(dataset)
    s = resolve_settings(TrainSettings(model=kind, dataset=dataset, name="plain"), ds)[0]
    model = build_model(kind, model_config(s, ds)).to(device)  # as jobs.train builds it
    lr, batch = s.lr, s.batch_size
    gpu = device != "cpu"
    memory_format = memory_format_for(model, gpu)
    model.to(memory_format=memory_format)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, pin_memory=gpu)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu)
    if kind == "cvae":
        opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    else:
        G, D = model.generator, model.discriminator
        opts = {
            "generator": torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.9), fused=True),
            "discriminator": torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.9), fused=True),
        }
    noise_dim = step_noise_dim(model)
    rates = []  # images/s per epoch; like the trainer's figure, the median of the epochs after the first
    for epoch in range(epochs):
        seen, t0 = 0, time.perf_counter()
        for step, (x, y) in enumerate(loader):
            x, y = (
                x.to(device, non_blocking=True, memory_format=memory_format),
                y.to(device, non_blocking=True),
            )
            z = torch.randn(len(x), noise_dim, device=device)
            if kind == "cvae":
                with autocast:
                    out = model(x, y, noise=z)
                opt.zero_grad()
                out.loss.backward()
                opt.step()
            else:  # the trainer's step, as one rank of one
                gan_step(model, G, D, opts, x, y, z, s, epoch, step, 0, 1, autocast)
            seen += len(x)
        if gpu:
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return float(np.median(rates[1:] or rates))


FASHION = "fashion-mnist:/usr/share/datasets/fashion-mnist"


def run(epochs: int = 20, fashion_epochs: int = 5) -> list[Row]:
    from jobs.data.spec import load_dataset
    from jobs.rayinit import ray_session
    from jobs.train import TrainSettings, train

    cases = [("digits", epochs)]
    try:
        load_dataset(FASHION, "train")
        cases.append((FASHION, fashion_epochs))
    except FileNotFoundError as e:
        print(f"skipping the Fashion-MNIST rows: {e}")
    rows = []
    with scratch_home() as home, ray_session():
        for dataset, n in cases:
            label = "digits" if dataset == "digits" else "Fashion-MNIST 28x28"
            for kind in ("cvae", "cgan"):
                info = train(
                    TrainSettings(
                        model=kind,
                        dataset=dataset,
                        name=f"bench-{kind}",
                        workers=2,
                        epochs=n,
                        checkpoint_every=n,
                    ),
                    home,
                    quiet=True,
                )
                plain = plain_images_per_s(kind, n, dataset)
                batch = info["train_settings"]["batch_size"]
                rows.append(
                    Row(
                        f"training images/s, {kind} on {label}, Ray Train 2 workers vs 1 plain process",
                        info["images_per_s"],
                        plain,
                        "img/s",
                        ">= 0.85",
                        f"{n} epochs, median after the first; global batch {batch}; "
                        f"plain process uses torch threads={torch.get_num_threads()}",
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="digits epochs (default 20)")
    p.add_argument("--fashion-epochs", type=int, default=5, help="Fashion-MNIST epochs (default 5)")
    args = p.parse_args(argv)
    print(json.dumps([r.to_dict() for r in run(args.epochs, args.fashion_epochs)], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
