"""``trio-gearmand``'s access control options: ``--acl FILE`` and ``--admin-from-anywhere``.

The ACL file is TOML, one ``[[rule]]`` table per rule (see
:meth:`trio_gearman.Acl.from_dict` and the production guide)::

    [[rule]]
    certificate = "worker-*.example.com"   # or: address = "10.0.0.0/8"
    register = ["resize_*"]
    submit = ["*"]
    admin = false
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Final

from .._proto.server.acl import Acl, AclError
from .options import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["acl_arguments", "add_acl_options", "check_acl_options", "read_acl"]

_RULE_HEADER: Final = re.compile(r"^[ \t]*\[\[[ \t]*rule[ \t]*\]\]", re.MULTILINE)


def add_acl_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--acl`` and ``--admin-from-anywhere`` to ``trio-gearmand``'s parser."""
    parser.add_argument(
        "--acl",
        metavar="FILE",
        help="access rules (TOML): who may register which functions, submit to which, "
        "and run the admin commands that change the server; what no rule grants is "
        "refused (the read-only admin commands stay open)",
    )
    parser.add_argument(
        "--admin-from-anywhere",
        action="store_true",
        help="without --acl, let every peer cancel jobs and create, drop or limit "
        "functions, as gearmand does (default: loopback peers only)",
    )


def read_acl(path: str) -> Acl:
    """The rules of the ACL file ``path``.

    Raises:
        UsageError: the file cannot be read or is not a valid ACL; the message
            names the file, the line where known, and the problem.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the ACL file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    lines = [text.count("\n", 0, match.start()) + 1 for match in _RULE_HEADER.finditer(text)]
    try:
        return Acl.from_dict(data, lines)
    except AclError as exc:
        raise UsageError(f"{path}: {exc}") from None


def check_acl_options(options: argparse.Namespace) -> None:
    """Read ``--acl`` into ``options.acl`` (an :class:`Acl` or ``None``).

    Raises:
        UsageError: a bad ACL file, or ``--admin-from-anywhere`` with ``--acl``.
    """
    if options.acl is None:
        return
    if options.admin_from_anywhere:
        raise UsageError(
            "--admin-from-anywhere and --acl: with --acl, grant admin in the file "
            '(a rule with address = "*" and admin = true opens it to everybody)'
        )
    options.acl_file = options.acl
    options.acl = read_acl(options.acl)


def acl_arguments(options: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :class:`GearmanServer` that the options give."""
    return {"acl": options.acl, "admin_from_anywhere": options.admin_from_anywhere}
