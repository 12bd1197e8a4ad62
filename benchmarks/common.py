"""Shared pieces of the benchmarks: result rows, a scratch storage root with a model, memory sampling."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass
class Row:
    """One line of benchmarks/results.json: genaug vs the plainest baseline, measured in the same run."""

    name: str
    genaug: float
    baseline: float | None
    unit: str
    target: str  # e.g. ">= 0.7" (ratio genaug/baseline) or "<= 1.5"; "n/a" for a reference row
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return float(self.genaug) / float(self.baseline)

    @property
    def met(self) -> bool | None:
        value = self.ratio if self.baseline is not None else self.genaug
        if value is None or self.target == "n/a":
            return None
        op, _, bound = self.target.partition(" ")
        return bool(value >= float(bound) if op == ">=" else value <= float(bound))

    def to_dict(self) -> dict:
        d = {
            k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in asdict(self).items()
        }
        return {**d, "ratio": self.ratio, "met": self.met}


@contextlib.contextmanager
def scratch_home(prefix: str = "genaug-bench-") -> Iterator[Path]:
    """A fresh storage root for one benchmark run, removed afterwards (runs leave no datasets behind)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def register_default_model(home: Path, kind: str = "cgan", name: str | None = None) -> str:
    """Register an untrained model with the default digits config (same cost as a trained one)."""
    import torch

    from jobs.store.registry import register_model
    from models.checkpoint import build_model

    torch.manual_seed(0)
    model = build_model(kind, {"image_size": 8, "channels": 1, "num_classes": 10})
    data = {"spec": "digits", "fingerprint": "benchmark", "image_shape": [1, 8, 8]}
    return register_model(home, name or f"bench-{kind}", model, [str(i) for i in range(10)], data).ref


class PeakRSS:
    """Sample the summed RSS of the given pids every ``interval`` s in a thread; ``.peak`` in bytes."""

    def __init__(self, pids: list[int], interval: float = 0.1):
        self.procs = [psutil.Process(p) for p in pids]
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in self.procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
