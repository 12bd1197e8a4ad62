"""What every job entry point's ``main(argv)`` shares: ``--home``, the job's flags, exit 2 on bad input."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

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
