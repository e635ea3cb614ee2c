"""Rate-limited logging: one line per kind of event per interval, with a count.

During a broker outage every consumer of a process meets the same errors at each
reconnect attempt, and librdkafka logs each attempt too. ``RateLimitedLog`` logs the
first event of a kind at once and sums the later ones into one line per interval
("...: 412 times in the last 10s on 10 consumers"), for the whole process.

It owns no thread or timer. A summary that is due is written by the next event of
any kind, or by ``flush()``, which code that runs anyway (the stream loop, a close)
calls; ``flush(force=True)`` writes what is pending at once.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

INTERVAL_SECONDS = 10.0
# Kinds remembered at once; past this, the pending counts are written out and forgotten.
MAX_KINDS = 256

_DIGITS = re.compile(r"\d+")

Line = tuple[int, str, tuple[Any, ...]]


def shape(text: str) -> str:
    """``text`` with its numbers blanked: what makes two messages the same kind.

    librdkafka puts durations, counters, ports and partitions in its messages
    ("... (after 0ms in state CONNECT)"); without this every attempt would be a new kind.
    """
    return _DIGITS.sub("#", text)


@dataclass
class _Kind:
    level: int
    msg: str  # the latest occurrence, with its args: what the summary line shows
    args: tuple[Any, ...]
    since: float  # when the last line of this kind was written
    count: int = 0  # occurrences since then
    sources: set[Hashable] = field(default_factory=set)


class RateLimitedLog:
    """Logs the first event of each kind at once, then at most one summary line per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        noun: str = "consumers",
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = MAX_KINDS,
    ) -> None:
        self.logger = logger
        self._noun = noun
        self._interval = interval
        self._clock = clock
        self._max_kinds = max_kinds
        # librdkafka calls back from consume() on the loop and in wait threads, and from its own threads.
        self._lock = threading.Lock()
        self._kinds: dict[Hashable, _Kind] = {}
        self._next_due = math.inf

    def log(self, level: int, kind: Hashable, source: Hashable, msg: str, *args: Any) -> None:
        """Log ``msg % args`` now if ``kind`` is new, else count it for the next summary.

        ``source`` says who met it (a consumer): the summary tells how many distinct ones did.
        """
        if not self.logger.isEnabledFor(level):
            return
        with self._lock:
            now = self._clock()
            lines = self._take_due(now, force=False) if now >= self._next_due else []
            entry = self._kinds.get(kind)
            if entry is None:
                if len(self._kinds) >= self._max_kinds:
                    lines += self._take_due(now, force=True)
                self._kinds[kind] = _Kind(level, msg, args, now)
                self._next_due = min(self._next_due, now + self._interval)
                lines.append((level, msg, args))
            else:
                entry.level, entry.msg, entry.args = level, msg, args
                entry.count += 1
                entry.sources.add(source)
        self._write(lines)

    def flush(self, force: bool = False) -> None:
        """Write the summaries that are due (all pending counts with ``force``); cheap when none is."""
        if not force and self._clock() < self._next_due:  # unlocked peek: the common case costs no lock
            return
        with self._lock:
            lines = self._take_due(self._clock(), force)
        self._write(lines)

    def _take_due(self, now: float, force: bool) -> list[Line]:
        """Summary lines of the kinds whose interval is over; forgets the kinds that stayed quiet."""
        lines: list[Line] = []
        next_due = math.inf
        for kind, entry in list(self._kinds.items()):
            if force or now - entry.since >= self._interval:
                if entry.count:
                    lines.append(self._summary(entry, now))
                    entry.count, entry.sources, entry.since = 0, set(), now
                elif not force:
                    # Quiet for a whole interval: its next occurrence is news again, logged at once.
                    del self._kinds[kind]
                    continue
            next_due = min(next_due, entry.since + self._interval)
        if force and len(self._kinds) >= self._max_kinds:
            self._kinds.clear()
            next_due = math.inf
        self._next_due = next_due
        return lines

    def _summary(self, entry: _Kind, now: float) -> Line:
        sources = len(entry.sources)
        return (
            entry.level,
            entry.msg + ": %d time%s in the last %.0fs on %d %s",
            (
                *entry.args,
                entry.count,
                "" if entry.count == 1 else "s",
                now - entry.since,
                sources,
                self._noun.removesuffix("s") if sources == 1 else self._noun,
            ),
        )

    def _write(self, lines: list[Line]) -> None:
        # Outside the lock: handlers do I/O, and a slow one must not stall librdkafka's threads.
        for level, msg, args in lines:
            self.logger.log(level, msg, *args)


class LibrdkafkaLogger:
    """What confluent-kafka's ``logger=`` option calls, rate-limited per kind of librdkafka message.

    confluent-kafka calls ``log(level, "%s [%s] %s", facility, client name, message)``;
    the kind is the level, the facility and the message's shape, the source the client name.
    """

    def __init__(self, log: RateLimitedLog) -> None:
        self.rate_limited = log

    def log(self, level: int, msg: str, *args: Any) -> None:
        if len(args) == 3:
            facility, name, text = args
            kind: Hashable = (level, facility, shape(str(text)))
            source: Hashable = name
        else:
            text = msg % args if args else msg
            kind, source, msg, args = (level, shape(text)), None, "%s", (text,)
        self.rate_limited.log(level, kind, source, msg, *args)

    def flush(self, force: bool = False) -> None:
        self.rate_limited.flush(force)
