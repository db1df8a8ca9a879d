"""Logging set-up: JSON lines for machines, readable lines in a terminal.

Records carry a stable ``event`` name and fields such as ``job_id`` (passed with ``extra=``).
Handlers write from a background thread through a queue, so logging never blocks the event
loop on a slow stream.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "event", None) or record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record_fields(record).items() if k != "event"})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL message key=value ...`` for people watching a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items() if k != "event")
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class _ListenedQueueHandler(logging.handlers.QueueHandler):
    """A queue handler with a reference to the listener draining its queue, for flushing."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord],
                 listener: logging.handlers.QueueListener) -> None:
        super().__init__(records)
        self.listener = listener


def flush_logs() -> None:
    """Write out every queued log record; call before leaving with ``os._exit``."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _ListenedQueueHandler):
            handler.listener.stop()


def configure_logging(level: str, *, json_lines: bool | None = None) -> None:
    """Send Odin's logs to stderr, as JSON lines or as readable lines (``json_lines``).

    By default the lines are JSON unless stderr is a terminal.
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    stream_handler = logging.StreamHandler(sys.stderr)
    stream_handler.setFormatter(JsonFormatter() if json_lines else ConsoleFormatter())

    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, stream_handler)
    listener.start()
    atexit.register(listener.stop)

    handler = _ListenedQueueHandler(records, listener)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Hypercorn's access log repeats what the API logs; keep its errors only.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
