"""Per-process connection limits: in total, per client address, and new connections per address per second."""

from __future__ import annotations

import time
from collections import Counter, deque

from .conf import conf
from .exceptions import TooManyConnectionsError


class ConnectionLimiter:
    """Admits or refuses new connections; ``release`` must follow every successful ``admit``."""

    def __init__(self) -> None:
        self.total = 0
        self.per_address: Counter[str] = Counter()
        self._recent: dict[str, deque[float]] = {}

    def admit(self, address: str) -> None:
        now = time.monotonic()
        if self.total >= conf.max_connections:
            raise TooManyConnectionsError("the server has no room for more connections", limit=conf.max_connections)
        if self.per_address[address] >= conf.max_connections_per_ip:
            raise TooManyConnectionsError("too many connections from your address", limit=conf.max_connections_per_ip)
        recent = self._recent.setdefault(address, deque())
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) >= conf.max_connection_rate_per_ip:
            raise TooManyConnectionsError(
                "too many new connections from your address; retry in a second",
                limit=conf.max_connection_rate_per_ip,
            )
        recent.append(now)
        self.total += 1
        self.per_address[address] += 1

    def release(self, address: str) -> None:
        self.total -= 1
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]
        recent = self._recent.get(address)
        if recent is not None and (not recent or time.monotonic() - recent[-1] >= 1.0):
            del self._recent[address]
