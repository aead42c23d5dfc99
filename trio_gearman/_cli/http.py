"""The job server's HTTP port (``trio-gearmand --http-port``; the ``monitor`` extra).

A small Starlette app served by Hypercorn's Trio worker, in the server's own
event loop: ``/metrics`` in the Prometheus text format (``prometheus-client``'s
exposition of ``_server.metrics.ServerCollector``), and ``/`` the live
dashboard (``trio-gearman monitor``'s page) of this server.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

import anyio
import trio
from anyio.abc import TaskStatus

from .._address import format_address

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._monitor.poller import Poller
    from .._server.server import GearmanServer

__all__ = ["MONITOR_EXTRA", "create_http_app", "missing_library", "serve_http"]

logger = logging.getLogger("trio_gearman.server.http")
# Hypercorn's own lines ("Running on ... (CTRL + C to quit)") only when they matter.
_hypercorn_logger = logging.getLogger("trio_gearman.server.http.hypercorn")
_hypercorn_logger.setLevel(logging.WARNING)

MONITOR_EXTRA = "install the 'monitor' extra: pip install 'trio-gearman[monitor]'"
"""What to say when the HTTP port is asked for without its libraries."""


def missing_library() -> str | None:
    """The name of a library of the ``monitor`` extra that cannot be imported, if any."""
    for name in ("hypercorn", "starlette", "prometheus_client"):
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def create_http_app(server: GearmanServer, poller: Poller | None = None) -> Starlette:
    """The ASGI app of the server's HTTP port: ``/metrics``, and ``/`` with ``poller``.

    Args:
        server: the job server whose metrics are served.
        poller: the dashboard's poller (of this server's own admin port), or ``None``
            for no dashboard.

    Raises:
        ImportError: the ``monitor`` extra is not installed.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Mount, Route

    from .._server.metrics import metrics_registry

    registry = metrics_registry(server)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [Route("/metrics", metrics)]
    if poller is not None:
        from .._monitor.web import create_app

        routes.append(Mount("/", create_app(poller)))
    return Starlette(routes=routes)


async def serve_http(
    server: GearmanServer,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve :func:`create_http_app` on ``host:port`` until cancelled (under Trio).

    Reports the bound address (``"127.0.0.1:9100"``) once it listens.

    Raises:
        ImportError: the ``monitor`` extra is not installed.
        OSError: the address cannot be bound.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from .._monitor.poller import Poller

    # The dashboard reads this server through its own admin port, as it reads any.
    bound_host, bound_port = server.addresses[0]
    loopback = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
    own = format_address(loopback, bound_port)
    poller = Poller([own])
    app = create_http_app(server, poller)
    config = Config()
    config.bind = [format_address(host, port)]
    config.accesslog = None
    config.errorlog = _hypercorn_logger
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)  # the page has data from its first request
        binds: list[str] = await nursery.start(serve, app, config)
        task_status.started(binds[0].removeprefix("http://"))
