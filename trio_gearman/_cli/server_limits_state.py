"""The ``trio-gearmand`` options that bound what the job table keeps."""

from __future__ import annotations

import argparse
from typing import Any

from .._proto.server.names import DEFAULT_MAX_FUNCTION_NAME

__all__ = ["add_state_limit_options", "state_limits"]


def _name_length(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


_name_length.__name__ = "number"


def add_state_limit_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of the job table's limits to ``parser``."""
    parser.add_argument(
        "--max-function-name",
        type=_name_length,
        default=DEFAULT_MAX_FUNCTION_NAME,
        metavar="BYTES",
        help="refuse function names longer than this, with an ERROR "
        f"(default {DEFAULT_MAX_FUNCTION_NAME}, as gearmand's packet buffer)",
    )


def state_limits(options: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~trio_gearman.ServerConfig` settings of the parsed options."""
    return {"max_function_name": options.max_function_name}
