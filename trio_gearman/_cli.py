"""The ``trio-gearmand`` and ``trio-gearman`` commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__


def _server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-gearmand",
        description="A Gearman job server, compatible with gearmand 1.1.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _tools_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-gearman",
        description="Gearman client-side tools: submit jobs, run workers, query job servers.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def server_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-gearmand``."""
    parser = _server_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2


def tools_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-gearman``."""
    parser = _tools_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2
