"""What every job entry point's ``main(argv)`` shares: ``--home``, the job's flags, exit 2 on bad input."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

from jobs.store.location import HOME_HELP


def job_main(
    prog: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Any],
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv`` (``--home`` + ``add_arguments``), call ``run``; a ``ValueError`` or
    ``FileNotFoundError`` is printed as ``error: ...`` with exit status 2. ``run`` may return an exit
    status; anything else means 0."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--home", default=None, help=HOME_HELP)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


class JsonRecord:
    """Mixin for a frozen dataclass that travels as JSON (queue rows, Ray task arguments, resume files):
    the fields named in ``TUPLE_FIELDS`` become lists in ``to_dict`` and tuples again in ``from_dict``."""

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **{f: list(getattr(self, f)) for f in self.TUPLE_FIELDS}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        return cls(**{**d, **{f: tuple(d[f]) for f in cls.TUPLE_FIELDS}})
