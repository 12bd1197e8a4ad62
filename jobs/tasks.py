"""Independent CPU work fanned out as Ray tasks: one CPU each, retried, results in submission order.

``run_calls`` runs named calls either in this process (``workers`` 1: no Ray, the order given) or as Ray
tasks on the local Ray or the cluster of ``RAY_ADDRESS`` (at most ``workers`` at once). A call whose work
is seeded and pinned to one thread (every evaluation protocol is) gives the same result either way.
Large arguments shared by several calls are put in the object store once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jobs.rayinit import ray_session
from jobs.store.location import read_json, write_json_atomic

if TYPE_CHECKING:
    import ray

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def remote_cpu(fn: Callable[..., Any]) -> Any:
    """``fn`` as a Ray task of one CPU, retried 3 times (every caller's task is idempotent)."""
    import ray

    return ray.remote(num_cpus=1, max_retries=3)(fn)


def wait_in_order(refs: Sequence[ray.ObjectRef], progress: Progress, what: str) -> list[Any]:
    """Wait for ``refs`` in completion order, reporting each; results in submission order."""
    import ray

    results: dict[ray.ObjectRef, Any] = {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        results[ready[0]] = ray.get(ready[0])
        progress(f"{what} {len(results)}/{len(refs)} done")
    return [results[r] for r in refs]


@dataclass(frozen=True)
class Call:
    """``fn(**kwargs)``, run by ``run_calls``; ``fn`` must be importable (module level) for Ray."""

    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


_SCALARS = (int, float, str, bool, type(None))


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of every ``.py`` file of the ``jobs`` and ``models`` packages (path and bytes): cached
    results are reused only by the code that made them."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in ("jobs", "models"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def describe(value: Any) -> Any:
    """A JSON value that identifies ``value`` as a call argument; TypeError for what it cannot name.

    Scalars as they are; tensors, arrays and modules by a hash of their contents; objects with a
    ``fingerprint`` (datasets) by it; dataclasses by their fields; ``functools.partial`` by the function's
    qualified name and its arguments; other functions by qualified name (module level only)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        arr = value.detach().cpu().contiguous().numpy() if isinstance(value, torch.Tensor) else value
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
        return {"array": digest, "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if isinstance(value, torch.nn.Module):
        h = hashlib.sha256(type(value).__qualname__.encode())
        for name, t in value.state_dict().items():
            h.update(name.encode() + describe(t)["array"].encode())
        config = getattr(value, "config", None)  # sampling settings that live outside the weights
        return {"module": type(value).__qualname__, "state": h.hexdigest(), "config": describe(config)}
    fingerprint = getattr(value, "fingerprint", None)
    if isinstance(fingerprint, str):
        return {"fingerprint": fingerprint}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {type(value).__qualname__: describe(dataclasses.asdict(value))}
    if isinstance(value, functools.partial):
        return {"partial": describe(value.func), "args": describe(value.args), "kw": describe(value.keywords)}
    name = getattr(value, "__qualname__", "")
    if callable(value) and name and "<" not in name:
        return f"{value.__module__}.{name}"
    raise TypeError(f"cannot name a {type(value).__name__} as a call argument")


def call_key(call: Call) -> str | None:
    """sha256 of the call (function, arguments, ``code_fingerprint``), or None when it cannot be named."""
    try:
        named = [code_fingerprint(), describe(call.fn), describe(dict(call.kwargs))]
        text = json.dumps(named, sort_keys=True)
    except TypeError:
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``fn(**kwargs)`` on one torch thread (what a task of one CPU gets), the thread count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(**kwargs)
    finally:
        torch.set_num_threads(before)


def run_calls(
    calls: Mapping[str, Call],
    workers: int = 1,
    *,
    on_done: Callable[[str, Any], None] | None = None,
    progress: Progress = _quiet,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Run every call; return ``{name: result}``. ``on_done(name, result)`` follows each finished call.

    ``cache``: a folder where each finished call's result is kept as ``<call_key>.json`` the moment it
    finishes, and read back instead of running the call again (an interrupted run resumes where it
    stopped; a call of other arguments or other code has another key). Calls that ``call_key`` cannot
    name, or whose results are not JSON, always run.

    Every call runs on one torch thread (float results can depend on the thread count). ``workers`` 1
    (or a single call): in this process, in the given order. More: Ray tasks of one CPU each, at most
    ``workers`` running at once, submitted in the given order (put the longest first); Ray is started here
    (or joined through ``RAY_ADDRESS``) when it is not up. A failed call raises its error after the others
    already running are given up.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    results: dict[str, Any] = {}
    keys = {name: call_key(c) if cache is not None else None for name, c in calls.items()}

    def done(name: str, result: Any, reused: bool = False) -> None:
        results[name] = result
        if keys[name] and not reused:
            try:
                write_json_atomic(cache / f"{keys[name]}.json", {"call": name, "result": result})
            except (TypeError, ValueError):  # not JSON: not cached
                pass
        if on_done is not None:
            on_done(name, result)
        progress(f"{name} {'reused' if reused else 'done'} ({len(results)}/{len(calls)})")

    todo = {}
    for name, c in calls.items():
        path = cache / f"{keys[name]}.json" if keys[name] else None
        if path is not None and path.is_file():
            try:
                done(name, read_json(path)["result"], reused=True)
                continue
            except (OSError, ValueError, KeyError):  # unreadable: run it again
                pass
        todo[name] = c
    if workers == 1 or len(todo) <= 1:
        for name, c in todo.items():
            done(name, _call(c.fn, **c.kwargs))
        return {name: results[name] for name in calls}

    import ray

    with ray_session():
        shared: dict[int, ray.ObjectRef] = {}  # id(value) -> its one copy in the object store
        for c in todo.values():
            for v in c.kwargs.values():
                if not isinstance(v, _SCALARS) and id(v) not in shared:
                    shared[id(v)] = ray.put(v)
        task = remote_cpu(_call)
        queue = list(todo.items())
        running: dict[ray.ObjectRef, str] = {}
        try:
            while queue or running:
                while queue and len(running) < workers:
                    name, c = queue.pop(0)
                    # ObjectRefs passed as top-level arguments arrive as their values
                    args = {k: v if isinstance(v, _SCALARS) else shared[id(v)] for k, v in c.kwargs.items()}
                    running[task.remote(c.fn, **args)] = name
                ready, _ = ray.wait(list(running), num_returns=1)
                name = running.pop(ready[0])
                done(name, ray.get(ready[0]))
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
    return {name: results[name] for name in calls}
