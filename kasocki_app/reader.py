"""Where a connection's records come from: the interface every reader implements.

``kafka.KafkaSource`` is one librdkafka consumer (a connection's own with KASOCKI_LIVE_TAIL
off, a catch-up reader, the live tail's shared one); ``tailing.TailReader`` reads the
live tail's rings and catches up on a KafkaSource of its own; tests use an in-memory
log (``tests/fakes.py``).

The contract the connection relies on:

* ``read`` hands each record over once, in offset order per partition. Records it could
  not hand over (its caller was cancelled) wait in the reader for the next ``read``. What
  was fetched of a partition before ``remove`` may still come; the connection drops it.
* ``read(n, 0)`` returns at once without suspending its caller: what is already fetched,
  or nothing. With a timeout it waits at most that long for a first record (or less, e.g.
  when the cluster changed); concurrent reads are allowed, and the reader keeps its own
  rules about which calls may overlap.
* An offset that left the log comes back as an error record (``_AUTO_OFFSET_RESET``) with
  the lost offset; the partition then waits for ``seek``. Other errors of the reader come
  from ``take_errors``.
* ``release`` lets go of what reading holds while the connection reads nothing for a while
  (a stalled client): a catch-up consumer and what it prefetched. Positions are kept; the
  next read that waits takes it up again.
* ``close`` releases everything, once, whenever it is called; True when it finished in time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from .exceptions import KafkaError
from .types import Position, Readable, TopicPartition


class Reader(Protocol):
    """One connection's view of the log: assigned partitions, read from given offsets."""

    async def assign(self, positions: Sequence[Position]) -> None:
        """Read exactly these partitions, each from its position."""
        ...

    async def add(self, positions: Sequence[Position]) -> None:
        """Also read these partitions, each from its position."""
        ...

    async def remove(self, partitions: Sequence[TopicPartition]) -> None:
        """Stop reading these partitions."""
        ...

    async def seek(self, position: Position) -> None:
        """Continue a partition at another offset (also after it reported a lost offset)."""
        ...

    async def read(self, max_records: int, timeout: float) -> Sequence[Readable]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds when none is ready."""
        ...

    def take_errors(self) -> list[KafkaError]:
        """Errors met since the last call, for the client."""
        ...

    async def release(self) -> None:
        """Nothing will be read for a while: let go of buffers and consumers that can be had again."""
        ...

    async def close(self) -> bool: ...


ReaderFactory = Callable[[], Awaitable[Reader]]
