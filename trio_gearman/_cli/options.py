"""What both commands share: the usage error, option value parsers, error unwrapping."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["UsageError", "leaves", "seconds"]


class UsageError(Exception):
    """A bad option or value found after parsing: reported in one line, exit status 2."""


def seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse ``type`` for a number of seconds: positive, or also 0 with ``zero``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not (value >= 0 if zero else value > 0):  # NaN fails both
            what = "0 or a positive number" if zero else "a positive number"
            raise argparse.ArgumentTypeError(f"{text} is not {what} of seconds")
        return value

    parse.__name__ = "seconds"
    return parse


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, in order; ``exc`` if it is none."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc
