"""Test helpers: an embedded job server to run your clients and workers against.

Works on any test runner, under Trio or AnyIO (asyncio too); the pytest fixtures of
:mod:`trio_gearman.pytest_plugin` are thin wrappers around :func:`open_test_server`.
"""

from .._proto.server.model import JobOutcome as JobOutcome
from ._embedded import EmbeddedServer as EmbeddedServer, open_test_server as open_test_server
from ._history import JobRecord as JobRecord
from ._memory import MemoryByteStream as MemoryByteStream, memory_stream_pair as memory_stream_pair

__all__ = [
    "EmbeddedServer",
    "JobOutcome",
    "JobRecord",
    "MemoryByteStream",
    "memory_stream_pair",
    "open_test_server",
]
