"""Log context: every line logged while serving a connection carries its sid and client address.

The app only sets the context; the project's LOGGING attaches ``ContextFilter`` to its
handlers and picks a formatter (``JsonFormatter`` for one JSON object per line).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging

connection_context: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "kasocki_connection", default=("-", "-")
)


def bind(sid: str, address: str) -> None:
    """Tag everything logged from here on in this task (and tasks it starts) with the connection."""
    connection_context.set((sid, address))


class ContextFilter(logging.Filter):
    """Adds ``sid`` and ``client`` attributes to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.sid, record.client = connection_context.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, sid, client (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "sid": getattr(record, "sid", "-"),
            "client": getattr(record, "client", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
