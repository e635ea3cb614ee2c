"""Log context: every line logged while serving a connection carries its sid and client address.

The app only sets the context; the project's LOGGING attaches ``ContextFilter`` to its
handlers and picks a formatter (``JsonFormatter`` for one JSON object per line).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

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


class LibraryLogger(logging.Logger):
    """A logger for python-socketio and python-engineio inside Kasocki.

    Their errors are mostly caused by what clients send (undecodable packets, bad
    polling requests): logged as one warning line with the exception, no traceback.
    Their per-packet info chatter goes to debug.
    """

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        if level >= logging.ERROR:
            level = logging.WARNING
            error = sys.exc_info()[1] if exc_info is True else exc_info if isinstance(exc_info, BaseException) else None
            if error is not None:
                msg = f"{(str(msg) % args) if args else msg} ({type(error).__name__}: {error})"
                args = ()
            exc_info = None
        elif level == logging.INFO:
            level = logging.DEBUG
        if self.isEnabledFor(level):  # info() checked INFO; the level may have dropped since
            super()._log(level, msg, args, exc_info=exc_info, extra=extra, stack_info=stack_info, stacklevel=stacklevel)


def library_logger(name: str) -> logging.Logger:
    """A LibraryLogger named ``name`` below the app's logger (so the project's handlers apply)."""
    logger = LibraryLogger(name)
    logger.parent = logging.getLogger(__name__.rsplit(".", 1)[0])
    return logger
