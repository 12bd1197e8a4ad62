"""run_calls: in process or as Ray tasks, the same results in the same order; its cache; naming calls."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from jobs import tasks
from jobs.tasks import Call, call_key, describe, run_calls


def seeded_sum(x: torch.Tensor, seed: int) -> float:
    """A seeded, one-thread computation on a shared tensor argument."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float((x * torch.randn(x.shape)).sum())


def fails(seed: int) -> float:
    raise ValueError(f"bad seed {seed}")


def test_in_process_runs_in_order_and_caches_each_finished_call(tmp_path):
    x = torch.arange(12.0)
    calls = {f"s{s}": Call(seeded_sum, dict(x=x, seed=s)) for s in (2, 0, 1)}
    seen: list[str] = []
    out = run_calls(calls, 1, on_done=lambda name, _: seen.append(name), cache=tmp_path)
    assert list(out) == seen == ["s2", "s0", "s1"]
    assert out["s0"] == seeded_sum(x, 0) != out["s1"]
    assert sorted(json.loads(p.read_text())["call"] for p in tmp_path.glob("*.json")) == ["s0", "s1", "s2"]

    # A second run reads them back: a call that would now fail is not run at all.
    log: list[str] = []
    again = run_calls(calls, 1, progress=log.append, cache=tmp_path)
    assert again == out and all("reused" in line for line in log) and len(log) == 3
    # Other arguments are another call.
    more = {"s0": Call(seeded_sum, dict(x=x + 1, seed=0))}
    assert run_calls(more, 1, cache=tmp_path)["s0"] == seeded_sum(x + 1, 0) != out["s0"]


@pytest.mark.slow
def test_ray_tasks_give_the_in_process_results_and_raise_a_calls_error(ray_local):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    calls = {f"s{s}": Call(seeded_sum, dict(x=x, seed=s)) for s in range(5)}
    assert run_calls(calls, 2) == run_calls(calls, 1)
    with pytest.raises(ValueError, match="bad seed 3"):
        run_calls({**calls, "bad": Call(fails, dict(seed=3))}, 2)


def test_workers_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            run_calls({}, bad)


def test_calls_are_named_by_their_contents_and_unnameable_ones_are_not_cached(tmp_path):
    x = torch.zeros(3)
    key = call_key(Call(seeded_sum, dict(x=x, seed=0)))
    assert key == call_key(Call(seeded_sum, dict(x=torch.zeros(3), seed=0)))
    assert key != call_key(Call(seeded_sum, dict(x=torch.ones(3), seed=0)))
    assert key != call_key(Call(seeded_sum, dict(x=x, seed=1)))
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert describe(a) != describe(b) and describe(a) == describe(a)
    partial = functools.partial(seeded_sum, x)
    assert describe(partial)["partial"] == "tests.jobs.test_tasks.seeded_sum"
    assert call_key(Call(lambda seed: seed, dict(seed=0))) is None  # a lambda has no stable name
    ran: list[int] = []

    def local(seed: int) -> int:
        ran.append(seed)
        return seed

    run_calls({"a": Call(local, dict(seed=1))}, 1, cache=tmp_path)
    run_calls({"a": Call(local, dict(seed=1))}, 1, cache=tmp_path)
    assert ran == [1, 1] and not list(tmp_path.glob("*.json"))
    with pytest.raises(TypeError, match="cannot name a object"):
        describe(object())


def test_other_code_makes_other_calls(monkeypatch):
    call = Call(seeded_sum, dict(x=torch.zeros(3), seed=0))
    key = call_key(call)
    assert len(tasks.code_fingerprint()) == 64
    monkeypatch.setattr(tasks, "code_fingerprint", lambda: "0" * 64)
    assert call_key(call) != key
