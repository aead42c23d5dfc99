"""Persistent queues for the job server: background jobs that survive a restart.

A store implements :class:`~.base.QueueStore`; the server drives it from a
thread with :class:`~.writer.StoreWriter` (group commit), and replays what it
holds before it accepts connections.
"""

from __future__ import annotations

from .base import QueueStore, StoreContents, StoredJob, StoreError
from .sqlite import SqliteStore

__all__ = ["QueueStore", "SqliteStore", "StoreContents", "StoreError", "StoredJob"]
