"""The ``trio-gearman`` command: client-side tools (submit jobs, run workers, admin)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-gearman",
        description="Gearman client-side tools: submit jobs, run workers, query job servers.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-gearman``."""
    parser = _parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2
