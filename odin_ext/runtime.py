"""``Runtime``: everything one Odin process runs, started and stopped in order.

Start: embedded database (when no URL is configured) → migrations → connection pool →
listener → broker → worker pool. Stop, in reverse: stop claiming and drain the worker pool
within the grace period, end open streams, stop the broker and the listener, close the pool,
stop the embedded database last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from pathlib import Path

import psycopg

from odin_ext.db import create_pool
from odin_ext.embedded import EmbeddedPostgres
from odin_ext.kinds import Registry
from odin_ext.listener import Listener
from odin_ext.migrations import migrate, pending_migrations
from odin_ext.settings import Settings
from odin_ext.store import JobStore
from odin_ext.streams import Broker
from odin_ext.worker import WorkerPool

logger = logging.getLogger(__name__)


def new_owner_identity() -> str:
    """Return an identity for this process that no other process, past or future, shares."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Runtime:
    """The services of one process. Create it, ``await start()``, and ``await stop()``."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry.from_modules(settings.kind_modules)
        self.owner = new_owner_identity()
        # Set when shutdown begins: streams end themselves and workers stop claiming.
        self.stopping = asyncio.Event()
        self.embedded: EmbeddedPostgres | None = None
        self.conninfo = settings.database_url
        self.pool = None
        self.store: JobStore = None  # type: ignore[assignment]
        self.broker: Broker = None  # type: ignore[assignment]
        self.listener: Listener | None = None
        self.workers: WorkerPool | None = None
        self._stop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.conninfo:
            self.embedded = start_embedded(self.settings.embedded_data_dir)
            self.conninfo = self.embedded.url
        applied = await migrate(self.conninfo)
        if applied:
            logger.info("database migrated", extra={"event": "migrated", "versions": applied})

        self.pool = create_pool(self.settings, self.conninfo)
        await self.pool.open(wait=True)
        self.store = JobStore(self.pool)
        self.broker = Broker(self.store, self.settings.stream_queue_size)
        if self.settings.run_workers:
            self.workers = WorkerPool(self.settings, self.store, self.registry, self.owner)
        self.listener = Listener(
            self.conninfo,
            on_events=self.broker.on_notify,
            on_jobs=self._on_jobs,
            on_connected=self._on_listener_connected,
        )
        self.broker.start()
        self.listener.start()
        if self.workers is not None:
            self.workers.start()
        logger.info(
            "odin started",
            extra={"event": "odin_started", "owner": self.owner,
                   "kinds": len(self.registry), "workers": self.settings.run_workers},
        )

    def begin_shutdown(self) -> None:
        """Start stopping: streams end, workers stop claiming and drain. Safe to call twice."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        logger.info("shutdown started", extra={"event": "shutdown_started"})
        if self.workers is not None:
            self._stop_task = asyncio.create_task(
                self.workers.stop(self.settings.shutdown_grace_seconds), name="odin-drain"
            )

    async def stop(self) -> None:
        self.begin_shutdown()
        if self._stop_task is not None:
            await self._stop_task
        if self.broker is not None:
            await self.broker.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.pool is not None:
            await self.pool.close()
        if self.embedded is not None:
            self.embedded.stop()
        logger.info("odin stopped", extra={"event": "odin_stopped"})

    async def readiness_problem(self) -> str | None:
        """Return why this process cannot serve, or None when the database is reachable and migrated."""
        if self.stopping.is_set():
            return "shutting down"
        try:
            async with asyncio.timeout(2.0):
                async with self.pool.connection() as conn:
                    pending = await pending_migrations(conn)
        except (psycopg.Error, TimeoutError, OSError) as exc:
            return f"database unreachable: {exc.__class__.__name__}"
        if pending:
            return f"database not migrated: pending {', '.join(pending)}"
        return None

    def _on_jobs(self, queue: str) -> None:
        if self.workers is not None:
            self.workers.notify_queued(queue)

    def _on_listener_connected(self) -> None:
        self.broker.on_reconnect()
        if self.workers is not None:
            self.workers.notify_reconnected()


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start the embedded development database kept in ``data_dir``."""
    server = EmbeddedPostgres(data_dir)
    logger.warning(
        "no database URL configured, starting an embedded PostgreSQL for development",
        extra={"event": "embedded_db_starting", "data_dir": str(data_dir)},
    )
    server.start()
    return server
