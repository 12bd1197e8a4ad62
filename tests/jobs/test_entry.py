"""What the entry points share: JSON records round-trip with their tuples intact."""

from __future__ import annotations

import json
from dataclasses import dataclass

from jobs.entry import JsonRecord


@dataclass(frozen=True)
class _Task(JsonRecord):
    TUPLE_FIELDS = ("counts", "names")

    job: str
    counts: tuple[int, ...]
    names: tuple[str, ...]
    seed: int = 0


def test_json_record_round_trips_through_json_with_tuples():
    task = _Task("j1", (3, 4), ("a", "b"), seed=7)
    wire = json.loads(json.dumps(task.to_dict()))
    assert wire == {"job": "j1", "counts": [3, 4], "names": ["a", "b"], "seed": 7}
    back = _Task.from_dict(wire)
    assert back == task and isinstance(back.counts, tuple) and hash(back) == hash(task)
