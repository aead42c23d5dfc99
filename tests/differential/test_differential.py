"""The same conversations against gearmand 1.1.20 and against our server.

Transcripts must be equal after normalising handles, except where a scenario names a
deliberate difference (one of gearmand's bugs that we fix): then ours must be exactly
gearmand's transcript with that difference applied.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import trio

from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server.server import GearmanServer

from ..gearmand_peer import run_gearmand
from .harness import Transcript, format_transcript, normalise, play
from .scenarios import SCENARIOS, Scenario


def _config(args: Sequence[str]) -> ServerConfig:
    """The ServerConfig for the gearmand options the scenarios use."""
    config = ServerConfig()
    for arg in args:
        name, _, value = arg.partition("=")
        if name == "--exceptions":
            config.exceptions = True
        elif name == "--job-retries":
            config.job_retries = int(value)
        else:
            raise AssertionError(f"scenario option {arg!r} has no mapping")
    return config


@contextmanager
def run_ours(args: Sequence[str]) -> Iterator[tuple[str, int]]:
    """Our server in a thread of its own (so blocking test sockets can talk to it)."""
    ready: queue.Queue[object] = queue.Queue()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = GearmanServer(_config(args), [("127.0.0.1", 0)])
            await nursery.start(server.run)
            ready.put((server.addresses[0], trio.lowlevel.current_trio_token(), nursery))

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # handed to the test thread
            ready.put(exc)

    thread = threading.Thread(target=thread_main, name="trio-gearmand", daemon=True)
    thread.start()
    started = ready.get(timeout=10)
    if isinstance(started, BaseException):
        raise started
    assert isinstance(started, tuple)
    address: tuple[str, int] = started[0]
    token: trio.lowlevel.TrioToken = started[1]
    nursery: trio.Nursery = started[2]
    try:
        yield address
    finally:
        token.run_sync_soon(nursery.cancel_scope.cancel)
        thread.join(10)
        assert not thread.is_alive(), "our server did not stop"


def test_scenario_names_are_unique() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    assert len(SCENARIOS) >= 30


def test_every_difference_says_why() -> None:
    for scenario in SCENARIOS:
        assert bool(scenario.adjust) == bool(scenario.why), scenario.name


def _compare(scenario: Scenario, theirs: Transcript, ours: Transcript) -> None:
    if scenario.adjust is not None:
        theirs = scenario.adjust(theirs)
    expected, got = normalise(theirs), normalise(ours)
    if scenario.mask is not None:
        expected, got = scenario.mask(expected), scenario.mask(got)
    assert got == expected, (
        f"{scenario.name}\n--- expected (gearmand"
        + (f", adjusted: {scenario.why}" if scenario.adjust else "")
        + f")\n{format_transcript(expected)}\n--- ours\n{format_transcript(got)}"
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_same_conversation_as_gearmand(scenario: Scenario) -> None:
    with run_gearmand(scenario.server_args) as server:
        theirs = play((server.host, server.port), scenario.steps)
    with run_ours(scenario.server_args) as address:
        ours = play(address, scenario.steps)
    _compare(scenario, theirs, ours)
