"""Supervised links to several job servers: connect, back off, reconnect, report health.

The failover policy lives here and only here:

* :class:`Backoff` decides how long a broken link waits before it reconnects
  (exponential, with jitter, bounded, reset after a healthy period);
* :func:`rendezvous_order` decides which server a unique key prefers, so duplicates
  coalesce on one server while it lives and removing a server moves only its keys;
* :class:`Link` runs one server's connection as a task that reconnects by itself and
  reports each transition once;
* :class:`LinkSet` holds every configured server's link and picks a live one;
* :class:`Heartbeat` decides when a server that went silent counts as gone.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import random
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, NoReturn, Protocol, TypeVar

import anyio
import anyio.abc
import attrs

from ._exceptions import ConnectFailed, GearmanError, NoServersAvailable

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "Backoff",
    "Heartbeat",
    "Link",
    "LinkSet",
    "LinkState",
    "ServerHealth",
    "Watched",
    "preferred_order",
    "rendezvous_order",
]

logger = logging.getLogger("trio_gearman.supervisor")

C = TypeVar("C")


@attrs.frozen
class Backoff:
    """How long a broken link waits before its next connection attempt.

    The n-th consecutive failure (n = 1, 2, ...) waits ``initial * multiplier**(n-1)``
    seconds, capped at ``maximum``, then scaled by a random factor in
    ``[1 - jitter, 1]`` so that many clients do not reconnect in lockstep. A link
    that stayed up for at least ``healthy_after`` seconds starts again from ``initial``.

    Attributes:
        initial: the first delay, in seconds.
        maximum: the largest delay, in seconds.
        multiplier: growth factor between consecutive failures.
        jitter: fraction of the delay that is randomised (0 = none, 1 = full jitter).
        healthy_after: seconds of uptime after which the failure count resets.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2
    healthy_after: float = 30.0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait before the next attempt after ``failures`` consecutive failures.

        Args:
            failures: consecutive failures so far, at least 1.
            rng: the source of jitter.

        Returns:
            Seconds to wait, within ``[(1 - jitter) * base, base]`` where ``base`` is
            the capped exponential delay.
        """
        exponent = max(failures, 1) - 1
        # Compare in log space so a long outage never overflows the float.
        if exponent * math.log(self.multiplier) >= math.log(self.maximum / self.initial):
            base = self.maximum
        else:
            base = self.initial * self.multiplier**exponent
        return base * (1 - self.jitter * rng.random())


def _score(key: bytes, server: str) -> int:
    digest = hashlib.blake2b(key + b"\0" + server.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: bytes, servers: Sequence[str]) -> list[str]:
    """The servers in the order a job with unique ``key`` should try them.

    Highest-random-weight (rendezvous) hashing: every (key, server) pair gets a
    stable score and servers are tried best score first. The same key always
    prefers the same server while the set is unchanged, and removing a server only
    moves the keys that preferred it.

    Args:
        key: the job's unique key.
        servers: the configured server addresses.
    """
    return sorted(servers, key=lambda server: _score(key, server), reverse=True)


def preferred_order(key: bytes | None, servers: Sequence[str]) -> list[str]:
    """The order in which a request tries the servers.

    A request with a unique key follows :func:`rendezvous_order`, so duplicates meet
    on one server; one without keeps the configured order (the caller then spreads
    such requests round-robin over the live servers).

    Args:
        key: the job's unique key, or ``None``/empty for none.
        servers: the configured server addresses.
    """
    return rendezvous_order(key, servers) if key else list(servers)


class LinkState(enum.Enum):
    """Where a supervised link is in its life."""

    CONNECTING = "connecting"
    UP = "up"
    BACKING_OFF = "backing off"
    STOPPED = "stopped"


@attrs.frozen
class ServerHealth:
    """A snapshot of one server link, as ``client.servers()`` reports it.

    Attributes:
        address: the server, ``host:port``.
        state: the link's state.
        since: loop time (``anyio.current_time()``) of the last transition.
        last_error: the error that last broke or refused the link, if any.
        failures: consecutive failures; reset once the link has stayed up for
            ``Backoff.healthy_after`` seconds.
        jobs_in_flight: jobs this link is waiting on.
        answered: the server has answered on the current connection. A link that
            is up but has not been answered yet gets work only when no other
            server can take it (a server that accepts connections and never
            answers is dropped after the handshake time-out).
    """

    address: str
    state: LinkState
    since: float
    last_error: BaseException | None
    failures: int
    jobs_in_flight: int = 0
    answered: bool = False

    @property
    def up(self) -> bool:
        """Whether the link is up (connected; see also :attr:`answered`)."""
        return self.state is LinkState.UP

    def __str__(self) -> str:
        if self.state is LinkState.UP:
            return f"{self.address}: up, {self.jobs_in_flight} jobs in flight"
        text = f"{self.address}: {self.state.value}"
        if self.last_error is not None:
            failures = f"{self.failures} failure" + ("" if self.failures == 1 else "s")
            text += f" after {failures}, the last: {self.last_error}"
        return text


class Link(Generic[C]):
    """One server's connection, kept alive by a task that reconnects by itself.

    ``connect`` opens a connection (and should time out by itself, e.g. with
    :func:`anyio.fail_after`); ``serve`` runs it and returns or raises when it
    breaks. Between attempts the link waits as ``backoff`` says. Errors of
    ``connect`` and ``serve`` that are :class:`OSError` or a
    :class:`~trio_gearman.GearmanError` break the link and are kept as
    ``last_error``; anything else is a bug and propagates.

    Args:
        address: the server, ``host:port``.
        connect: opens a connection to ``address``.
        serve: runs an open connection until it breaks.
        backoff: the reconnect policy.
        rng: the source of jitter (a seeded one makes tests repeatable).
        on_change: called after every state transition.
        role: who owns the link (``"client"``, ``"worker"``), for the log.
    """

    def __init__(
        self,
        address: str,
        connect: Callable[[str], Awaitable[C]],
        serve: Callable[[C], Awaitable[None]],
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_change: Callable[[], None] | None = None,
        role: str = "",
    ) -> None:
        self.address = address
        self._label = f"{role} link to {address}" if role else f"link to {address}"
        self._connect = connect
        self._serve = serve
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self.state = LinkState.STOPPED
        self.since = 0.0
        self.last_error: BaseException | None = None
        self.failures = 0
        self.connection: C | None = None
        self._changed = anyio.Event()
        self._on_change = on_change
        self._reported_down = False

    def health(self, jobs_in_flight: int = 0, answered: bool = False) -> ServerHealth:
        """A snapshot of this link."""
        return ServerHealth(
            self.address,
            self.state,
            self.since,
            self.last_error,
            self.failures,
            jobs_in_flight,
            answered,
        )

    async def wait_changed(self) -> None:
        """Wait for the link's next state transition."""
        await self._changed.wait()

    def _set_state(self, state: LinkState) -> None:
        self.state = state
        self.since = anyio.current_time()
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        if self._on_change is not None:
            self._on_change()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Keep the link up until cancelled. Reports started at once.

        Raises:
            BaseException: only what is not a connection failure (a bug).
        """
        task_status.started()
        try:
            while True:
                self._set_state(LinkState.CONNECTING)
                up_at: float | None = None
                try:
                    connection = await self._connect(self.address)
                    self.connection = connection
                    up_at = anyio.current_time()
                    if self._reported_down:  # once per outage, as its warning
                        self._reported_down = False
                        logger.info(
                            "%s up again after %d failed attempts", self._label, self.failures
                        )
                    self._set_state(LinkState.UP)
                    await self._serve(connection)
                    error: BaseException = ConnectionResetError(
                        f"{self.address}: connection closed by the server"
                    )
                except (OSError, GearmanError) as exc:
                    error = exc
                finally:
                    self.connection = None
                if up_at is not None and anyio.current_time() - up_at >= self.backoff.healthy_after:
                    self.failures = 0
                self.failures += 1
                self.last_error = error
                if self.failures == 1:
                    self._reported_down = True
                    logger.warning("%s down: %s", self._label, error)
                else:
                    logger.debug("%s: attempt %d failed: %s", self._label, self.failures, error)
                self._set_state(LinkState.BACKING_OFF)
                await anyio.sleep(self.backoff.delay(self.failures, self._rng))
        finally:
            self.connection = None
            self.state = LinkState.STOPPED
            self._changed.set()
            if self._on_change is not None:
                self._on_change()


class LinkSet(Generic[C]):
    """The links to every configured server, and the choice of a live one.

    A link is *live* while it is up and its connection is ``usable``. Among live
    links those whose server has answered on the connection (``verified``) are
    preferred, so that a server that accepts connections but never answers (a
    black hole) gets no work while another one does.

    The set takes over the links' ``on_change``, to wake :meth:`wait_changed`.

    Args:
        links: one per server, in the configured order.
        usable: whether an open connection can take requests.
        verified: whether the server has answered on the connection yet.
    """

    def __init__(
        self,
        links: Sequence[Link[C]],
        *,
        usable: Callable[[C], bool],
        verified: Callable[[C], bool],
    ) -> None:
        self.links = list(links)
        self.addresses = [link.address for link in self.links]
        self._by_address = {link.address: link for link in self.links}
        if len(self._by_address) != len(self.links):
            raise ValueError(f"a server is listed twice: {self.addresses}")
        self._usable = usable
        self._verified = verified
        self._changed = anyio.Event()
        for link in self.links:
            link._on_change = self.notify

    def __getitem__(self, address: str) -> Link[C]:
        return self._by_address[address]

    def notify(self) -> None:
        """Wake every task waiting in :meth:`wait_changed` (a link's ``on_change``)."""
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_changed(self) -> None:
        """Wait for the next state transition of any link."""
        await self._changed.wait()

    def connection(self, address: str) -> C | None:
        """The connection of ``address`` if its link is live, else ``None``."""
        link = self._by_address[address]
        conn = link.connection
        if link.state is LinkState.UP and conn is not None and self._usable(conn):
            return conn
        return None

    def live(self) -> list[C]:
        """The connections of every live link, in the configured order."""
        found = []
        for address in self.addresses:
            conn = self.connection(address)
            if conn is not None:
                found.append(conn)
        return found

    def pick(self, order: Sequence[str], turn: int | None = None) -> C | None:
        """A live connection among the servers of ``order``, or ``None``.

        Args:
            order: the candidate servers, most preferred first.
            turn: ``None`` takes the first live candidate; a number takes the
                ``turn``-th one, round-robin (a counter that grows per request).
        """
        verified: list[C] = []
        unverified: list[C] = []
        for address in order:
            conn = self.connection(address)
            if conn is not None:
                if self._verified(conn):
                    if turn is None:
                        return conn
                    verified.append(conn)
                else:
                    unverified.append(conn)
        pool = verified or unverified
        if not pool:
            return None
        return pool[0] if turn is None else pool[turn % len(pool)]

    async def acquire(
        self,
        order: Sequence[str],
        turn: int | None = None,
        *,
        within: float,
        errors: Mapping[str, BaseException] | None = None,
    ) -> C:
        """Like :meth:`pick`, waiting up to ``within`` seconds for a live candidate.

        Args:
            order: the candidate servers, most preferred first.
            turn: as for :meth:`pick`.
            within: seconds to wait for a candidate to come up.
            errors: errors already met per server (they take precedence over the
                links' own in the exception group).

        Raises:
            NoServersAvailable: no candidate came up in time; ``__cause__`` is an
                exception group of every configured server's error, and the
                message names each server with its reason.
        """
        conn = self.pick(order, turn)
        if conn is not None:
            return conn
        with anyio.move_on_after(within):
            while conn is None:
                await self.wait_changed()
                conn = self.pick(order, turn)
            return conn
        group = self.errors(errors, f"did not come up within {within:g} s")
        raise NoServersAvailable(tuple(self.addresses), group.exceptions) from group

    def settled(self) -> bool:
        """Whether every link is up or has failed at least once."""
        return all(link.state is LinkState.UP or link.last_error is not None for link in self.links)

    async def wait_settled(self) -> None:
        """Wait until every link is up or has failed its first attempt."""
        while not self.settled():
            await self.wait_changed()

    def errors(
        self, errors: Mapping[str, BaseException] | None = None, reason: str = "not connected"
    ) -> ExceptionGroup[Exception]:
        """One error per configured server: what broke or refused it last.

        Args:
            errors: errors met per server, preferred to the links' own.
            reason: the text of the :class:`~trio_gearman.ConnectFailed` that
                stands in for a server that has no error (yet).
        """
        found: list[Exception] = []
        for link in self.links:
            error = (errors or {}).get(link.address) or link.last_error
            if not isinstance(error, Exception):
                error = ConnectFailed(reason, server=link.address)
            found.append(error)
        return ExceptionGroup("every server's error", found)

    def health(self, jobs_in_flight: Callable[[C], int]) -> list[ServerHealth]:
        """A snapshot of every link, in the configured order."""
        found = []
        for link in self.links:
            conn = link.connection
            if conn is None:
                found.append(link.health())
            else:
                found.append(link.health(jobs_in_flight(conn), self._verified(conn)))
        return found


class Watched(Protocol):
    """What :class:`Heartbeat` needs of a connection."""

    @property
    def heard(self) -> int:
        """How many chunks have arrived from the server so far."""

    @property
    def waiting(self) -> bool:
        """Whether the server owes this side an answer."""

    def probe(self) -> None:
        """Send an ECHO_REQ (its answer counts as anything heard)."""


@attrs.frozen
class Heartbeat:
    """When a server that went silent counts as gone.

    A connection is checked first ``first_check`` seconds after it opened, then
    every ``interval`` seconds. When the server owes an answer and has sent
    nothing since the previous check, the connection sends an ECHO_REQ; if
    nothing at all arrives within ``timeout`` seconds more, the server is gone.
    A live server always answers, so the probe never drops a healthy
    connection; an idle connection (nothing owed) is never probed.

    Attributes:
        first_check: seconds after connecting of the first check (the handshake).
        interval: seconds between checks.
        timeout: seconds an ECHO_REQ may go unanswered.
    """

    first_check: float = 4.0
    interval: float = 10.0
    timeout: float = 5.0

    def __attrs_post_init__(self) -> None:
        if not (self.first_check > 0 and self.interval > 0 and self.timeout > 0):
            raise ValueError(f"heartbeat times must be positive: {self}")

    async def watch(self, conn: Watched) -> str:
        """Watch ``conn``; return why it counts as gone, once it does.

        Returns only then: cancel the task to stop watching.
        """
        opened = anyio.current_time()
        seen = conn.heard
        await anyio.sleep(self.first_check)
        while True:
            if conn.waiting and conn.heard == seen:
                conn.probe()
                await anyio.sleep(self.timeout)
                if conn.heard == seen:
                    if seen == 0:
                        elapsed = anyio.current_time() - opened
                        return f"no answer within {elapsed:g} s of connecting"
                    return f"no answer to ECHO within {self.timeout:g} s"
            seen = conn.heard
            await anyio.sleep(self.interval)
