"""Persistent queues for the job server: background jobs that survive a restart.

A store implements :class:`~trio_gearman._proto.server.model.JobStore` (the state
machine tells it of every background job's start and end) and replays what it
holds into a fresh :class:`~trio_gearman._proto.server.state.ServerState` before
the server accepts connections.
"""

from __future__ import annotations

from .sqlite import SqliteStore, StoredJob

__all__ = ["SqliteStore", "StoredJob"]
