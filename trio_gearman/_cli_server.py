"""The ``trio-gearmand`` command: run a job server."""

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-gearmand``."""
    parser = _server_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2
