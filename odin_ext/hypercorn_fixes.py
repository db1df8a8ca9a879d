"""A correction to Hypercorn's asyncio server, applied when Odin's app is built.

Hypercorn 0.18.0 keeps an idle HTTP/1.1 connection open after the client has closed it. The
server stops reading at the client's end-of-file, but its keep-alive timer keeps the
connection's task group running. The socket then stays in CLOSE-WAIT, with all its objects,
until ``keep_alive_timeout`` runs out (75 seconds in Odin). Under steady load thousands of
such connections pile up, and every full garbage collection has to walk them: in the
latency benchmark that made collections take up to 190 ms. ``close_connections_on_eof``
stops the timer once the client's end-of-file is read, so the connection closes at once.

It replaces the ``TCPServer`` class that ``hypercorn.asyncio.run`` instantiates with a
subclass. If a Hypercorn release moves that name, the correction is skipped with a warning
and connections close at the keep-alive timeout as before.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def close_connections_on_eof() -> None:
    """Make Hypercorn's asyncio server close a connection when the client has closed it."""
    try:
        from hypercorn.asyncio import run as hypercorn_run
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.events import Event, Updated
    except ImportError:
        return
    if getattr(hypercorn_run, "TCPServer", None) is not TCPServer:
        if not getattr(hypercorn_run.TCPServer, "odin_closes_on_eof", False):
            logger.warning(
                "Hypercorn's TCPServer was not found where expected; connections closed "
                "by clients stay open until the keep-alive timeout",
                extra={"event": "hypercorn_fix_skipped"},
            )
        return
    if not all(hasattr(TCPServer, name) for name in ("_read_data", "protocol_send")):
        return

    class ClosingTCPServer(TCPServer):  # type: ignore[misc]
        odin_closes_on_eof = True

        async def _read_data(self) -> None:
            await super()._read_data()
            # Nothing more can arrive, so the keep-alive timer must not keep the connection
            # open until it runs out.
            await self.idle_task.stop()

        async def protocol_send(self, event: Event) -> None:
            # A client that closes as soon as it has read the response may do so before the
            # server has finished sending it. The timer must not start again after that.
            if isinstance(event, Updated) and event.idle and self.reader.at_eof():
                await self.idle_task.stop()
                return
            await super().protocol_send(event)

    hypercorn_run.TCPServer = ClosingTCPServer
