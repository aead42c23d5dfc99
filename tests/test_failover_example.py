"""``examples/failover.py`` runs as a program and tells the story it should."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import anyio
import trio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "failover.py"


async def test_the_failover_example_carries_on_without_one_server() -> None:
    with trio.fail_after(30):
        done = await anyio.run_process([sys.executable, str(EXAMPLE)])
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "three servers:"
    addresses = [line.split(": ")[0].strip() for line in lines[1:4]]
    assert all(line.endswith(": up, 0 jobs in flight") for line in lines[1:4])
    victim = addresses[1]
    assert f"server b ({victim}) goes down with jobs in flight" in lines
    assert any(line.startswith(f"  log: worker link to {victim} down: ") for line in lines)
    assert "300 of 300 jobs done right" in lines
    ran = re.fullmatch(
        r"they ran on: a (\d+), b (\d+), c (\d+)",
        lines[lines.index("300 of 300 jobs done right") + 1],
    )
    assert ran is not None
    assert sum(map(int, ran.groups())) >= 300
    down = lines[lines.index("server b is down:") + 2]
    assert down.startswith(f"  {victim}: ")
    assert " up" not in down
    assert "the last: " in down
    # back: it gets its share of the next jobs
    after = re.fullmatch(r"the next 90 jobs ran on: a (\d+), b (\d+), c (\d+)", lines[-5])
    assert after is not None
    assert int(after[2]) > 0
    assert sum(map(int, after.groups())) == 90
    assert lines[-4] == "three servers again:"
    assert all(line.endswith(": up, 0 jobs in flight") for line in lines[-3:])
