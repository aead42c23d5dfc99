"""The tutorial's test: the worker function of ``reverse_worker.py``, tested for real.

The pytest fixtures of trio_gearman start a job server inside the test run, with a
client and a worker connected to it. Run with pytest and pytest-trio installed::

    pytest examples/test_tutorial.py
"""

from __future__ import annotations

import pytest
from reverse_worker import reverse  # the code under test

import trio_gearman
from trio_gearman.testing import EmbeddedServer, JobOutcome

pytestmark = pytest.mark.trio  # or set trio_mode = true in pytest's configuration


async def test_reverse(
    gearman_server: EmbeddedServer,
    gearman_worker: trio_gearman.Worker,
    gearman_client: trio_gearman.Client[bytes],
) -> None:
    gearman_worker.register("reverse", reverse)
    async with gearman_client.submit_job("reverse", "Hello, Gearman") as job:
        updates = [update async for update in job]
    assert job.result == b"namraeG ,olleH"
    assert updates == [trio_gearman.WorkStatus(job.handle.handle, 1, 2)]  # half done
    assert gearman_server.history[0].outcome is JobOutcome.COMPLETED
