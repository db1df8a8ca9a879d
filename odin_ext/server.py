"""Serve an Odin app with Hypercorn in this process, with clean handling of SIGTERM and SIGINT.

On the first signal the runtime begins shutdown at once (workers stop claiming and drain,
streams end with a reconnect hint) and Hypercorn stops accepting connections; the lifespan
shutdown then waits for the drain and closes the database pool last. A second signal during
shutdown is ignored with a warning, so a platform's SIGTERM followed by Ctrl-C cannot cut the
final writes short; SIGKILL always can.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart

from odin_ext.logs import flush_logs
from odin_ext.runtime import Runtime
from odin_ext.settings import Settings

logger = logging.getLogger(__name__)


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{_bracket(settings.host)}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Streams end themselves on shutdown; this only bounds requests that do not.
    config.graceful_timeout = settings.shutdown_grace_seconds + 2
    config.keep_alive_timeout = 75
    return config


async def serve(app: Quart, settings: Settings) -> None:
    """Run the app until SIGTERM or SIGINT, then shut down cleanly."""
    runtime: Runtime = app.extensions["odin"]
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if shutdown.is_set():
            logger.warning(
                "signal ignored, shutdown already under way",
                extra={"event": "signal_ignored", "signal": signal.Signals(signum).name},
            )
            return
        logger.info(
            "signal received, shutting down",
            extra={"event": "signal_received", "signal": signal.Signals(signum).name},
        )
        shutdown.set()
        runtime.begin_shutdown()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await hypercorn_serve(app, hypercorn_config(settings), shutdown_trigger=shutdown.wait)
    _exit_if_threads_abandoned(runtime)


def _exit_if_threads_abandoned(runtime: Runtime) -> None:
    # A sync job cancelled at shutdown keeps its thread until the function returns, and the
    # interpreter would wait for it at exit, past the platform's kill deadline. Its job is
    # already handed back to the queue, so leave now.
    busy = runtime.workers.busy_threads if runtime.workers is not None else 0
    if busy:
        logger.warning(
            "exiting with sync jobs still running in threads",
            extra={"event": "threads_abandoned", "count": busy},
        )
        flush_logs()
        os._exit(0)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
