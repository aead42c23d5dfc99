"""Who may do what on the job server: access rules, sans-IO.

An :class:`Acl` is a list of :class:`AclRule`. Each rule names whom it is for (a
name of the peer's verified TLS certificate, the peer's address, or both) and what
it grants: registering functions as a worker (CAN_DO, CAN_DO_TIMEOUT), submitting
jobs (every SUBMIT_JOB kind), and the admin commands that change the server
(``cancel job``, ``create function``, ``drop function``, ``maxqueue``,
``shutdown``). The admin commands that only read (``status``, ``prioritystatus``,
``workers``, ``show jobs``, ``show unique jobs``, ``version``, ``getpid``,
``verbose``) are open to every peer, so that monitoring keeps working.

A connection may do what **any** rule that matches it grants (the union of the
matching rules): the order of the rules does not matter, and there are no deny
rules. What no matching rule grants is refused.

Without an :class:`Acl` every peer may register and submit anything, and the
admin commands that change the server are open to loopback peers only (127.0.0.0/8,
``::1``, and Unix sockets such as the test server's socket pairs), unless
``admin_from_anywhere`` restores gearmand's behaviour (anybody).

When a connection starts, :func:`grant_for` turns its :class:`Identity` into a
:class:`Grant` (the rules are matched once per connection); the server state asks
the grant about each request, and records each refusal as a :class:`Denial` for
the I/O layer to log.
"""

from __future__ import annotations

import enum
import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from ..._exceptions import GearmanError

__all__ = [
    "Acl",
    "AclError",
    "AclRule",
    "Action",
    "Denial",
    "FunctionFilter",
    "Grant",
    "Identity",
    "grant_for",
]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_GLOB: Final = frozenset("*?[")
_RULE_KEYS: Final = ("name", "certificate", "address", "register", "submit", "admin")


class AclError(GearmanError, ValueError):
    """An access rule or an ACL file is malformed; the message says where and why."""


class Action(str, enum.Enum):
    """What a rule may grant."""

    REGISTER = "register"
    """Register a function as a worker (CAN_DO, CAN_DO_TIMEOUT)."""
    SUBMIT = "submit"
    """Submit a job (SUBMIT_JOB of every kind, SUBMIT_REDUCE_JOB, SUBMIT_JOB_EPOCH)."""
    ADMIN = "admin"
    """Run an admin command that changes the server."""


def _ip(text: str) -> _IPAddress | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as IPv4), else ``None``."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class Identity:
    """Who is at the other end of a connection.

    Attributes:
        address: the peer's address as the admin ``workers`` listing shows it
            (``"10.0.0.5"``, ``"::1"``).
        names: the names of the peer's verified TLS certificate (its subject's
            common name and its subject alternative names); empty for a plaintext
            connection or one without a client certificate.
        local: the connection is a Unix socket (a socket pair of the test
            server): it counts as a loopback peer.
    """

    address: str
    names: tuple[str, ...] = ()
    local: bool = False

    @property
    def loopback(self) -> bool:
        """Whether the peer is on this machine: a loopback address or a Unix socket."""
        if self.local:
            return True
        address = _ip(self.address)
        return address is not None and address.is_loopback

    def describe(self) -> str:
        """The identity for a log line: ``10.0.0.5`` or ``10.0.0.5 (certificate: a, b)``."""
        if self.names:
            return f"{self.address} (certificate: {', '.join(self.names)})"
        return self.address


class FunctionFilter:
    """Function names that match at least one of a list of ``fnmatch`` patterns.

    Matching is case-sensitive (function names are); a function name that is not
    UTF-8 is matched with its other bytes as they are (``surrogateescape``).

    Args:
        patterns: glob patterns (``*``, ``?``, ``[seq]``), e.g. ``"resize_*"``.
    """

    __slots__ = ("_match", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(dict.fromkeys(patterns))
        if self.patterns:
            regex = "|".join(fnmatch.translate(pattern) for pattern in self.patterns)
            self._match: Any = re.compile(regex).match
        else:
            self._match = None

    def __call__(self, function: bytes) -> bool:
        """Whether ``function`` matches one of the patterns."""
        match = self._match
        return match is not None and match(function.decode("utf-8", "surrogateescape")) is not None

    def __repr__(self) -> str:
        return f"FunctionFilter({list(self.patterns)!r})"


def _check_address(spec: str) -> _IPAddress | _IPNetwork | str:
    """An ``address`` spec: a network (with ``/``), a glob pattern, or one address."""
    if "/" in spec:
        try:
            return ipaddress.ip_network(spec)
        except ValueError as exc:
            why = f"address {spec!r} is not a network (such as 10.0.0.0/8): {exc}"
            raise AclError(why) from None
    if _GLOB.intersection(spec):
        return spec
    address = _ip(spec)
    if address is None:
        raise AclError(
            f"address {spec!r} is not an IP address, a network (10.0.0.0/8) or a pattern (10.0.0.*)"
        )
    return address


def _check_patterns(value: object, key: str) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) and p for p in value):
        raise AclError(f"{key!r} must be a list of function name patterns, such as ['resize_*']")


def _to_patterns(value: Any) -> Any:
    """Lists become tuples (a rule is hashable); anything else is left for the check."""
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class AclRule:
    """One access rule: whom it is for, and what it grants them.

    A rule is for the peers that match every one of ``certificate`` and ``address``
    that it gives (at least one is needed).

    Args:
        certificate: a glob pattern for one of the peer's certificate names,
            matched ignoring case (``"worker-*.example.com"``); plaintext peers
            never match it.
        address: the peer's address: one address (``"10.0.0.5"``, ``"::1"``), a
            network (``"10.0.0.0/8"``) or a glob pattern of its text (``"10.0.0.*"``).
        register: patterns of the functions it may register as a worker.
        submit: patterns of the functions it may submit jobs to.
        admin: whether it may run the admin commands that change the server.
        name: how log lines and errors call the rule (default: ``rule N``, its
            place in the :class:`Acl`).

    Raises:
        AclError: neither ``certificate`` nor ``address`` is given, the address is
            malformed, or a pattern list is not a list of non-empty strings.

    Example:
        >>> rule = AclRule(address="10.0.0.0/8", submit=["*"])
        >>> rule.matches(Identity("10.1.2.3"))
        True
    """

    certificate: str | None = None
    address: str | None = None
    register: tuple[str, ...] = attrs.field(default=(), converter=_to_patterns)
    submit: tuple[str, ...] = attrs.field(default=(), converter=_to_patterns)
    admin: bool = False
    name: str = ""
    _address: _IPAddress | _IPNetwork | str | None = attrs.field(
        init=False, eq=False, repr=False, default=None
    )

    def __attrs_post_init__(self) -> None:
        if self.certificate is None and self.address is None:
            raise AclError("a rule needs 'certificate' or 'address' (whom it is for)")
        for key, value in (("certificate", self.certificate), ("address", self.address)):
            if value is not None and (not isinstance(value, str) or not value):
                raise AclError(f"{key!r} must be a non-empty string")
        _check_patterns(self.register, "register")
        _check_patterns(self.submit, "submit")
        if not isinstance(self.admin, bool):
            raise AclError("'admin' must be true or false")
        if self.address is not None:
            object.__setattr__(self, "_address", _check_address(self.address))

    def matches(self, identity: Identity) -> bool:
        """Whether the rule is for the peer ``identity``."""
        if self.certificate is not None:
            pattern = self.certificate.lower()
            if not any(fnmatch.fnmatchcase(name.lower(), pattern) for name in identity.names):
                return False
        spec = self._address
        if spec is None:
            return True
        if isinstance(spec, str):
            return fnmatch.fnmatchcase(identity.address.lower(), spec.lower())
        address = _ip(identity.address)
        if address is None:
            return False
        if isinstance(spec, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            return address in spec
        return address == spec


class Acl:
    """The access rules of a job server.

    A connection may do what any rule that matches it grants; what none grants is
    refused (the admin commands that only read are always open).

    Args:
        rules: the rules; those without a ``name`` are called ``rule N`` (from 1).

    Example:
        >>> acl = Acl([AclRule(certificate="worker-*", register=["resize_*"])])
        >>> grant = acl.grant(Identity("10.0.0.5", names=("worker-1",)))
        >>> grant.may_register(b"resize_png"), grant.may_submit(b"resize_png")
        (True, False)
    """

    def __init__(self, rules: Iterable[AclRule]) -> None:
        self.rules = tuple(
            rule if rule.name else attrs.evolve(rule, name=f"rule {number}")
            for number, rule in enumerate(rules, 1)
        )

    def __repr__(self) -> str:
        return f"Acl({list(self.rules)!r})"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], lines: Sequence[int] = ()) -> Acl:
        """The rules of a parsed ACL file (``tomllib.load``'s result).

        The file has an array of tables named ``rule``; each has the keys of
        :class:`AclRule` (``name``, ``certificate``, ``address``, ``register``,
        ``submit``, ``admin``)::

            [[rule]]
            certificate = "worker-*.example.com"
            register = ["resize_*"]

        Args:
            data: the parsed file.
            lines: the line number of each ``[[rule]]`` header, in order, for the
                error messages (when known).

        Raises:
            AclError: the data are not a valid ACL; the message names the rule
                (and its line) and the problem.
        """
        unknown = [key for key in data if key != "rule"]
        if unknown:
            raise AclError(
                f"unknown key {unknown[0]!r} at the top level (rules are [[rule]] tables)"
            )
        tables = data.get("rule", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise AclError("'rule' must be an array of tables: write each rule as [[rule]]")
        rules = []
        for number, table in enumerate(tables, 1):
            where = f"rule {number}"
            if len(lines) == len(tables):
                where += f" (line {lines[number - 1]})"
            unknown = [key for key in table if key not in _RULE_KEYS]
            try:
                if unknown:
                    raise AclError(
                        f"unknown key {unknown[0]!r} (a rule has {', '.join(_RULE_KEYS)})"
                    )
                name = table.get("name", f"rule {number}")
                if not isinstance(name, str) or not name:
                    raise AclError("'name' must be a non-empty string")
                rules.append(AclRule(**{**table, "name": name}))
            except AclError as exc:
                raise AclError(f"{where}: {exc}") from None
        return cls(rules)

    def grant(self, identity: Identity) -> Grant:
        """What the peer ``identity`` may do: the union of the rules that match it."""
        matching = [rule for rule in self.rules if rule.matches(identity)]
        return Grant(
            identity,
            register=[p for rule in matching for p in rule.register],
            submit=[p for rule in matching for p in rule.submit],
            admin=any(rule.admin for rule in matching),
            rules=tuple(rule.name for rule in matching),
            acl=True,
        )


class Grant:
    """What one connection may do (made once per connection by :func:`grant_for`).

    Args:
        identity: the peer.
        register: patterns of the functions it may register; ``None``: any.
        submit: patterns of the functions it may submit to; ``None``: any.
        admin: it may run the admin commands that change the server.
        rules: the names of the rules that matched the peer.
        acl: the grant comes from an :class:`Acl` (else from the defaults).

    Attributes:
        identity: the peer.
        register: the filter of the functions it may register, or ``None`` (any).
        submit: the filter of the functions it may submit to, or ``None`` (any).
        admin: it may run the admin commands that change the server.
        rules: the names of the rules that matched the peer.
    """

    __slots__ = ("_acl", "admin", "identity", "register", "rules", "submit")

    def __init__(
        self,
        identity: Identity,
        *,
        register: Iterable[str] | None = None,
        submit: Iterable[str] | None = None,
        admin: bool = True,
        rules: tuple[str, ...] = (),
        acl: bool = False,
    ) -> None:
        self.identity = identity
        self.register = _filter(register)
        self.submit = _filter(submit)
        self.admin = admin
        self.rules = rules
        self._acl = acl

    def may_register(self, function: bytes) -> bool:
        """Whether the peer may register ``function`` as a worker."""
        check = self.register
        return check is None or check(function)

    def may_submit(self, function: bytes) -> bool:
        """Whether the peer may submit jobs to ``function``."""
        check = self.submit
        return check is None or check(function)

    def why_not(self) -> str:
        """Why a request was refused, for the log line."""
        if not self._acl:
            return "admin commands that change the server are open to loopback peers only"
        if self.rules:
            return f"not granted by the rules that match the peer ({', '.join(self.rules)})"
        return "no rule matches the peer"


def _filter(patterns: Iterable[str] | None) -> FunctionFilter | None:
    if patterns is None:
        return None
    patterns = tuple(patterns)
    return None if "*" in patterns else FunctionFilter(patterns)


def grant_for(acl: Acl | None, identity: Identity, *, admin_from_anywhere: bool = False) -> Grant:
    """What the peer ``identity`` may do on a server with the rules ``acl``.

    Args:
        acl: the rules, or ``None``: anybody may register and submit anything.
        identity: the peer.
        admin_from_anywhere: without rules, every peer may run the admin commands
            that change the server (gearmand's behaviour); else loopback peers only.
    """
    if acl is not None:
        return acl.grant(identity)
    return Grant(identity, admin=admin_from_anywhere or identity.loopback)


@attrs.frozen
class Denial:
    """A request that the access rules refused: the I/O layer logs it.

    Attributes:
        identity: the peer.
        action: what it tried.
        target: the function it named (register, submit), or the admin command's
            first words.
        reason: why it was refused (which rules matched the peer, if any).
    """

    identity: Identity
    action: Action
    target: bytes
    reason: str
