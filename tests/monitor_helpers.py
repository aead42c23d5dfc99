"""Helpers for the monitor's tests: serve its app on a free port, read it over raw HTTP,
and load it in headless Chromium (Debian's ``chromium``).

Tests that need Chromium are skipped where it is missing, except under CI
(``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path

import anyio
import attrs
import pytest
import trio

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
)


@attrs.frozen
class Reply:
    """An HTTP response, as read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        """The body as a JSON object."""
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode()


async def http_get(base: str, path: str) -> Reply:
    """``GET base+path`` over one HTTP/1.1 connection (``base``: ``http://host:port``)."""
    host, _, port = base.removeprefix("http://").rstrip("/").rpartition(":")
    with trio.fail_after(10):
        async with await anyio.connect_tcp(host.strip("[]"), int(port)) as stream:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            await stream.send(request.encode())
            data = b""
            while True:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "chunked" not in headers.get("transfer-encoding", "")
    assert int(headers["content-length"]) == len(body)
    return Reply(int(status_line.split()[1]), headers, body)


@asynccontextmanager
async def serving(app: object) -> AsyncIterator[str]:
    """Serve an ASGI app with Hypercorn's Trio worker on a free loopback port; yield its
    base URL (``http://127.0.0.1:PORT``)."""
    import hypercorn.config
    import hypercorn.trio

    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(hypercorn.trio.serve, app, config)
        yield urls[0]
        nursery.cancel_scope.cancel()


# --- the browser ---------------------------------------------------------------------------


def require_chromium() -> str:
    """The path of headless Chromium, or skip (fail under CI) when it is missing."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    message = "chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


async def chromium(binary: str, profile: Path, *args: str, budget_ms: int = 2000) -> str:
    """Run headless Chromium to the end of its virtual time budget; return its stdout.

    ``--virtual-time-budget`` lets the page's scripts run (timers advance on virtual
    time; the page's fetches are waited for) before Chromium dumps or shoots it.
    """
    command: Sequence[str] = [
        binary,
        "--headless=new",
        "--no-sandbox",  # the tests run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        *args,
    ]
    with trio.fail_after(30):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(
            done.returncode, command, done.stdout, done.stderr.decode(errors="replace")
        )
    return done.stdout.decode()


class Tables(HTMLParser):
    """The cells of every table with an id, body and footer rows only, as text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.texts: dict[str, str] = {}
        self._table: str | None = None
        self._in_head = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._ids: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get("id")
        if tag in VOID:
            return
        self._ids.append(found)
        if tag == "table" and found:
            self._table = found
            self.tables[found] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table and not self._in_head:
            self._row = []
        elif tag in {"td", "th"} and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if self._ids:
            self._ids.pop()
        if tag == "table":
            self._table = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag in {"td", "th"} and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for found in self._ids:
            if found:
                self.texts[found] = self.texts.get(found, "") + data

    def rows(self, table: str) -> list[list[str]]:
        """The rows of a table, each a list of its cells' texts."""
        return self.tables[table]

    def text(self, element: str) -> str:
        """The text inside the element with this id, spaces collapsed."""
        return " ".join(self.texts.get(element, "").split())
