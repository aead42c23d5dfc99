"""The monitor's web side: a Starlette app, served by Hypercorn's Trio worker.

Needs the ``monitor`` extra (``pip install 'trio-gearman[monitor]'``); nothing else
in the package imports this module at import time.

Routes, relative to where the app is mounted:

* ``/``: the dashboard, a page that fetches ``api/status`` every poll interval and
  redraws itself (templates and scripts are package data, served from here);
* ``/api/status``: the JSON the page shows (``docs/howto/monitoring.rst``), with the
  query parameters ``server`` (repeated or comma-separated) and ``function`` (a part
  of the name or a shell-style pattern);
* ``/static/...``: the page's script and style sheet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio.abc
import hypercorn.config
import hypercorn.trio
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from .._address import format_address
from .._version import __version__
from .model import Filters
from .poller import Poller

__all__ = ["create_app", "serve"]

_HERE = Path(__file__).resolve().parent
_NO_STORE = {"Cache-Control": "no-store"}
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's script and style sheet, read once: name to (content, media type).

    They are a few kilobytes, so they are kept in memory and answered as plain
    responses (Starlette's file responses, which stream from disk, lose the end of a
    ``Connection: close`` exchange under Hypercorn's Trio worker).
    """
    return {
        path.name: (path.read_bytes(), _MEDIA_TYPES[path.suffix])
        for path in sorted((_HERE / "static").iterdir())
        if path.suffix in _MEDIA_TYPES
    }


def _filters(request: Request) -> Filters:
    return Filters.from_query(
        request.query_params.getlist("server"), request.query_params.get("function")
    )


def create_app(poller: Poller) -> Starlette:
    """The monitor's ASGI app, showing what ``poller`` reads.

    The app does not run the poller: run :meth:`Poller.run` next to it. It can be
    served alone or mounted under a path of another Starlette app
    (``Mount("/monitor", create_app(poller))``): its links are relative to where it is
    mounted.
    """
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    templates = Jinja2Templates(env=environment)
    static_files = _static_files()

    async def index(request: Request) -> Response:
        filters = _filters(request)
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "servers": poller.servers,
                "filters": filters,
                "interval_ms": round(poller.interval * 1000),
                "version": __version__,
            },
            headers=_NO_STORE,
        )

    async def api_status(request: Request) -> Response:
        return JSONResponse(poller.view(_filters(request)), headers=_NO_STORE)

    async def static(request: Request) -> Response:
        found = static_files.get(request.path_params["name"])
        if found is None:
            return PlainTextResponse("Not Found", status_code=404)
        content, media_type = found
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return Starlette(
        routes=[
            Route("/", index, name="index"),
            Route("/api/status", api_status, name="api_status"),
            Route("/static/{name}", static, name="static"),
        ]
    )


async def serve(
    poller: Poller,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Poll the servers and serve the dashboard over HTTP until cancelled (Trio only).

    The servers are polled once before the port opens, so the first page has figures.

    Args:
        poller: the servers to watch.
        host: the address to listen on.
        port: the port (0: any free port).
        task_status: reports the URLs served (``["http://127.0.0.1:8080"]``).
    """
    config = hypercorn.config.Config()
    config.bind = [format_address(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("trio_gearman.monitor.http")
    config.graceful_timeout = 1.0
    app = create_app(poller)
    async with anyio.create_task_group() as tg:

        async def http(*, task_status: anyio.abc.TaskStatus[list[str]]) -> None:
            async with anyio.create_task_group() as server:
                task_status.started(await server.start(hypercorn.trio.serve, app, config))
            # Hypercorn returns on its own after a KeyboardInterrupt (which it
            # swallows): stop polling too.
            tg.cancel_scope.cancel()  # pragma: no cover (needs a KeyboardInterrupt)

        await tg.start(poller.run)
        urls: list[str] = await tg.start(http)
        task_status.started(urls)
