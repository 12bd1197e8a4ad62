"""Where a 28 px cGAN training step's time goes on this CPU: FLOPs per image, sustained FLOP/s, the rest.

    python -m benchmarks.profile_cgan [--dataset fashion-mnist:/usr/share/datasets/fashion-mnist] [--steps 30]

Protocol (the default recipe's model and batch for the data, one process, all cores):
1. FLOPs of one training step (D step on real + fake, G step through a frozen D, EMA update) counted by
   ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, forward and backward), per image;
2. the step's measured img/s in a plain loop, contiguous (NCHW) and channels_last (NHWC) -> FLOP/s achieved;
3. the machine's sustained FLOP/s on one dense fp32 matmul (2048^3) and on the step's largest convolution
   alone, the ceilings the step could reach;
4. ``torch.profiler``: the share of the step's CPU time per op family (conv forward/backward, matmul,
   optimiser, elementwise and norms, other), so the gap between 2 and 3 is named.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from jobs.data.spec import load_dataset
from jobs.trainer.settings import TrainSettings, model_config, resolve_settings
from models.cgan import d_loss, g_loss
from models.checkpoint import build_model

FASHION = "fashion-mnist:/usr/share/datasets/fashion-mnist"


def _setup(dataset: str, channels_last: bool):
    torch.manual_seed(0)
    ds = load_dataset(dataset)
    s = resolve_settings(TrainSettings(model="cgan", dataset=dataset, name="profile"), ds)[0]
    model = build_model("cgan", model_config(s, ds))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    G, D = model.generator, model.discriminator
    opts = [torch.optim.Adam(m.parameters(), lr=s.lr, betas=(0.0, 0.9), fused=True) for m in (G, D)]
    x = ds.images[: s.batch_size].contiguous(memory_format=fmt)
    y = ds.labels[: s.batch_size]
    return model, G, D, opts, x, y


def _step(model, G, D, opts, x, y) -> None:
    og, od = opts
    z = torch.randn(len(x), model.noise_dim)
    dl = d_loss(G, D, x, y, z)
    od.zero_grad(set_to_none=True)
    dl.loss.backward()
    od.step()
    D.requires_grad_(False)
    gl = g_loss(G, D, y, torch.randn(len(x), model.noise_dim))
    og.zero_grad(set_to_none=True)
    gl.loss.backward()
    og.step()
    D.requires_grad_(True)
    model.update_ema(G)


def _rate(fn, n: int, per_call: float) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n * per_call / (time.perf_counter() - t0)


def _family(name: str) -> str:
    n = name.lower()
    if "convolution_backward" in n or "conv" in n and "backward" in n:
        return "conv backward"
    if "conv" in n:
        return "conv forward"
    if any(k in n for k in ("mm", "addmm", "linear", "matmul", "bmm")):
        return "matmul (linear, spectral norm)"
    if "adam" in n or "foreach" in n or "lerp" in n:
        return "optimiser + EMA"
    if any(
        k in n for k in ("norm", "relu", "leaky", "tanh", "mul", "add", "sub", "div", "cat", "copy", "fill")
    ):
        return "elementwise, norms, copies"
    return "other"


def run(dataset: str = FASHION, steps: int = 30) -> dict:
    out: dict = {"dataset": dataset, "threads": torch.get_num_threads()}
    model, G, D, opts, x, y = _setup(dataset, channels_last=True)
    batch = len(x)
    with FlopCounterMode(display=False) as counter:
        _step(model, G, D, opts, x, y)
    flops = counter.get_total_flops() / batch
    out["flops_per_image"] = flops
    for layout in ("nchw", "nhwc"):
        m, g, d, o, xx, yy = _setup(dataset, channels_last=layout == "nhwc")
        ips = _rate(lambda m=m, g=g, d=d, o=o, xx=xx, yy=yy: _step(m, g, d, o, xx, yy), steps, batch)
        out[f"images_per_s_{layout}"] = ips
        out[f"gflops_achieved_{layout}"] = ips * flops / 1e9
    a = torch.randn(2048, 2048)
    out["gflops_matmul_2048"] = _rate(lambda: a @ a, 10, 2 * 2048**3) / 1e9
    conv = max(
        (mod for mod in D.modules() if isinstance(mod, torch.nn.Conv2d)), key=lambda c: c.weight.numel()
    )
    h = torch.randn(batch, conv.in_channels, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), FlopCounterMode(display=False) as cc:
        conv(h)
    out["gflops_largest_conv_fwd"] = _rate(lambda: conv(h), 20, cc.get_total_flops()) / 1e9
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            _step(model, G, D, opts, x, y)
    shares: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in prof.key_averages():
        if e.key.startswith("aten::") and e.cpu_time_total > 0:
            shares[_family(e.key)] += e.self_cpu_time_total
            total += e.self_cpu_time_total
    out["cpu_time_share"] = {k: round(v / total, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=FASHION)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args(argv)
    print(json.dumps(run(args.dataset, args.steps), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
