"""Supervised links to several job servers: connect, back off, reconnect, report health.

The failover policy lives here and only here:

* :class:`Backoff` decides how long a broken link waits before it reconnects
  (exponential, with jitter, bounded, reset after a healthy period);
* :func:`rendezvous_order` decides which server a unique key prefers, so duplicates
  coalesce on one server while it lives and removing a server moves only its keys;
* :class:`Link` runs one server's connection as a task that reconnects by itself and
  reports each transition once.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, NoReturn, TypeVar

import anyio
import anyio.abc
import attrs

from ._exceptions import GearmanError

__all__ = [
    "Backoff",
    "Link",
    "LinkState",
    "ServerHealth",
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
    """

    address: str
    state: LinkState
    since: float
    last_error: BaseException | None
    failures: int
    jobs_in_flight: int = 0


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
    """

    def __init__(
        self,
        address: str,
        connect: Callable[[str], Awaitable[C]],
        serve: Callable[[C], Awaitable[None]],
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
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

    def health(self, jobs_in_flight: int = 0) -> ServerHealth:
        """A snapshot of this link."""
        return ServerHealth(
            self.address, self.state, self.since, self.last_error, self.failures, jobs_in_flight
        )

    async def wait_changed(self) -> None:
        """Wait for the link's next state transition."""
        await self._changed.wait()

    def _set_state(self, state: LinkState) -> None:
        self.state = state
        self.since = anyio.current_time()
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

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
                    if self.failures:
                        logger.info(
                            "%s: connected again after %d failed attempts",
                            self.address,
                            self.failures,
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
                    logger.warning("%s: link down: %s", self.address, error)
                else:
                    logger.debug("%s: attempt %d failed: %s", self.address, self.failures, error)
                self._set_state(LinkState.BACKING_OFF)
                await anyio.sleep(self.backoff.delay(self.failures, self._rng))
        finally:
            self.connection = None
            self.state = LinkState.STOPPED
            self._changed.set()
