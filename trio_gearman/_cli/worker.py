"""``trio-gearman worker``: run a :class:`~trio_gearman.Worker` defined in user code."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import ssl
import sys
import traceback
from collections.abc import AsyncIterable, Callable
from typing import Any, Final

import anyio
import anyio.abc

from .._worker.worker import Worker
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_common_options,
    error,
    resolve_servers,
    setup_logging,
    tls_context,
)
from .options import seconds

__all__ = ["WorkerLoadError", "add_worker_parser", "load_worker", "run_worker", "serve_worker"]

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
DEFAULT_DRAIN_TIMEOUT: Final = 10.0

_WORKER_HELP = """\
Run the trio_gearman.Worker named by MODULE:OBJECT until SIGINT or SIGTERM, then
stop gracefully: nothing more is grabbed, running jobs get --drain-timeout seconds
to finish (a second signal cancels them at once), and the command exits with
status 0.

OBJECT (a dotted path inside MODULE) is a Worker, or a callable that returns one.
A callable with a 'servers' parameter is called with the servers of --servers (or
of $GEARMAN_SERVERS); such a factory is the way to choose the servers from the
command line. A Worker made in advance keeps the servers it was made with, and
--servers is refused for it: a Worker's servers are fixed when it is made.
Likewise a callable with an 'ssl_context' parameter gets the TLS context of the
TLS options (--ssl, --ssl-ca-file, --ssl-certificate); for anything else they
are refused. A tls://HOST:PORT server needs no option.
The current directory is searched for MODULE first.
"""


class WorkerLoadError(Exception):
    """User code raised while the worker was imported or made: exit status 1."""


def add_worker_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``worker`` subcommand."""
    parser = commands.add_parser(
        "worker",
        help="run a Worker defined in your code (MODULE:OBJECT) until SIGINT/SIGTERM",
        description=_WORKER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="MODULE:OBJECT",
        help="e.g. 'myapp.jobs:worker' or 'myapp.jobs:make_worker'",
    )
    parser.add_argument(
        "--drain-timeout",
        type=seconds(zero=True),
        metavar="SECONDS",
        default=DEFAULT_DRAIN_TIMEOUT,
        help="on SIGINT/SIGTERM, how long running jobs may take to finish "
        f"(default: {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    add_common_options(parser, timeout=False)
    parser.set_defaults(run=run_worker, parser=parser)


# --- loading -------------------------------------------------------------------------------


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" ({os.path.basename(frame.filename)}, line {frame.lineno})"


def _user_code_failed(what: str, exc: BaseException) -> WorkerLoadError:
    return WorkerLoadError(f"{what}: {type(exc).__name__}: {exc}{_where(exc)}")


def _import(module_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(f"no module named {missing!r} (looked in {cwd} too)") from None
        raise _user_code_failed(f"importing {module_name!r} failed", exc) from None
    except Exception as exc:
        raise _user_code_failed(f"importing {module_name!r} failed", exc) from None


def _call_factory(
    factory: Callable[..., object],
    target: str,
    servers: list[str],
    source: str,
    ssl_context: ssl.SSLContext | None,
) -> object:
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: just call them
        signature = None
    if inspect.iscoroutinefunction(factory):
        module, _, name = target.partition(":")
        raise UsageError(
            f"{target} is an async function, a job function perhaps; the command runs a "
            "Worker: give it a Worker, or a function that returns one, e.g. "
            f'\'worker = Worker(); worker.register("{name.rpartition(".")[2]}", '
            f"{name.rpartition('.')[2]})' in {module}, then 'trio-gearman worker {module}:worker'"
        )
    kwargs: dict[str, object] = {}
    parameter = None if signature is None else signature.parameters.get("servers")
    if parameter is not None:
        if source != "default" or parameter.default is inspect.Parameter.empty:
            kwargs["servers"] = servers
    elif source == "option":
        raise UsageError(
            f"--servers: {target} takes no 'servers' parameter; give it one to choose the "
            "servers from the command line"
        )
    if ssl_context is not None:
        if signature is not None and "ssl_context" not in signature.parameters:
            raise UsageError(
                f"--ssl: {target} takes no 'ssl_context' parameter; give it one (and pass "
                "it to Worker) to choose TLS from the command line"
            )
        kwargs["ssl_context"] = ssl_context
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise UsageError(f"{target} cannot be called without arguments: {exc}") from None
    try:
        return factory(**kwargs)
    except Exception as exc:
        raise _user_code_failed(f"{target}() failed", exc) from None


def load_worker(
    target: str, servers: list[str], source: str, ssl_context: ssl.SSLContext | None = None
) -> Worker:
    """Import ``module:object`` and make the Worker it names.

    Args:
        target: ``"package.module:attribute"`` (the attribute may be dotted).
        servers: the servers resolved from the command line or the environment.
        source: where ``servers`` come from: ``"option"`` (``--servers``),
            ``"env"`` (``GEARMAN_SERVERS``) or ``"default"``.
        ssl_context: the TLS context of the TLS options, if any were given.

    Returns:
        The Worker: ``object`` itself, or what calling it returned. A callable with
        a ``servers`` parameter gets ``servers`` (unless they are only the default
        and the parameter has a default of its own); one with an ``ssl_context``
        parameter gets ``ssl_context``, when there is one.

    Raises:
        UsageError: ``target`` is malformed or names nothing usable, or
            ``--servers`` (or a TLS option) was given for a Worker whose servers
            (or TLS settings) are fixed.
        WorkerLoadError: importing the module or calling the factory raised.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{target!r} is not MODULE:OBJECT (e.g. 'myapp.jobs:worker')")
    found: Any = _import(module_name)
    path = module_name
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"{path!r} has no attribute {part!r}") from None
        path = f"{path}.{part}"
    if isinstance(found, Worker):
        if source == "option":
            raise UsageError(
                f"--servers: {target} is a Worker made with its own servers "
                f"({', '.join(found.addresses)}), which cannot be changed; point at a "
                "function that takes 'servers' and returns the Worker instead"
            )
        if ssl_context is not None:
            raise UsageError(
                f"--ssl: {target} is a Worker made with its own TLS settings, which cannot "
                "be changed; point at a function that takes 'ssl_context' and returns the "
                "Worker instead"
            )
        worker = found
    elif callable(found):
        worker_or_not = _call_factory(found, target, servers, source, ssl_context)
        if not isinstance(worker_or_not, Worker):
            raise UsageError(
                f"{target}() returned {type(worker_or_not).__name__}, not a trio_gearman.Worker"
            )
        worker = worker_or_not
    else:
        raise UsageError(
            f"{target} is a {type(found).__name__}, not a trio_gearman.Worker "
            "or a callable that returns one"
        )
    if not worker.functions:
        raise UsageError(f"the worker of {target} has no functions registered")
    return worker


# --- serving -------------------------------------------------------------------------------


async def serve_worker(
    worker: Worker,
    drain_timeout: float,
    signals: AsyncIterable[int],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the worker until a stop signal arrives, then drain it and return.

    Args:
        worker: the worker to run.
        drain_timeout: after the first signal, the seconds running jobs get to
            finish; a second signal cancels them at once.
        signals: the signal numbers received.
        task_status: started once every server has had its first connection
            attempt (the worker goes on trying those that are not up).
    """
    async with anyio.create_task_group() as tg:

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            await worker.run(task_status=task_status)
            tg.cancel_scope.cancel()

        await tg.start(run)
        live = [health.address for health in worker.servers() if health.up]
        where = (
            f"on {', '.join(live)}"
            if live
            else f"once a server is up (none is yet: {', '.join(worker.addresses)})"
        )
        error(
            f"worker serving {', '.join(worker.functions)} {where} "
            f"(pid {os.getpid()}); stop it with SIGINT or SIGTERM"
        )
        task_status.started()
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stopping:
                stopping = True
                running = worker.running_jobs
                error(
                    f"{name}: stopping; {running} running job(s) get up to "
                    f"{drain_timeout:g} s to finish"
                )
                worker.stop(drain_timeout)
            else:
                error(f"{name} again: cancelling the running jobs")
                worker.stop(0)
    error("worker stopped")


async def run_worker(options: argparse.Namespace) -> int:
    """Run ``worker``; return the exit status."""
    setup_logging(options.verbose, quiet_level=logging.WARNING)
    context = tls_context(options)
    servers, source = resolve_servers(options.servers, tls=context is not None)
    try:
        worker = load_worker(options.target, servers, source, context)
    except WorkerLoadError as exc:
        error(str(exc))
        return EXIT_FAILED
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        await serve_worker(worker, options.drain_timeout, signals)
    return EXIT_OK
