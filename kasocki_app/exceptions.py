"""Errors that reach clients (socket.io and HTTP streams), each serialised as ``{"name", "message", "origin", ...}``."""

from __future__ import annotations

from typing import Any


class KasockiError(Exception):
    """Base class of every error a client can see; never carries internal detail."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def name(self) -> str:
        return type(self).__name__

    def to_dict(self, event: str | None = None) -> dict[str, Any]:
        """The error object sent to the client in an ack and an ``err`` event."""
        return {"name": self.name, "message": self.message, "origin": "Kasocki", "event": event, **self.details}


class InvalidAssignmentError(KasockiError):
    """A ``subscribe`` argument has the wrong shape, types or size."""


class TopicNotAvailableError(KasockiError):
    """A topic is not allowed for this client or does not exist (the two look the same)."""


class PartitionNotAvailableError(KasockiError):
    """A partition does not exist in an allowed topic."""


class AlreadySubscribedError(KasockiError):
    """``subscribe`` after a successful ``subscribe`` on the same connection."""


class NotSubscribedError(KasockiError):
    """``consume`` or ``start`` before a successful ``subscribe``."""


class AlreadyStartedError(KasockiError):
    """``start`` while the connection is already streaming."""


class InvalidArgumentError(KasockiError):
    """Any other client event payload is malformed (for example ``start``'s options)."""


class UnknownEventError(KasockiError):
    """The client emitted an event name the protocol does not have."""


class InvalidFilterError(KasockiError):
    """A ``filter`` argument is not a valid filter object."""


class TooManyRequestsError(KasockiError):
    """More requests wait for an answer on one connection than KASOCKI_MAX_INFLIGHT_REQUESTS."""


class SlowClientError(KasockiError):
    """The client stopped reading: its backlog stayed over the cap; the server disconnects it."""


class OffsetOutOfRangeError(KasockiError):
    """While streaming, the next offset left the log (retention); reading goes on per the reset policy."""


class PartitionsChangedError(KasockiError):
    """A subscribed topic gained partitions; the new ones are read from their start."""


class TooManyConnectionsError(KasockiError):
    """A connection limit of this process (total, per address, or per address per second) is reached."""


class TooManyConsumersError(KasockiError):
    """This process already runs KASOCKI_MAX_CONSUMERS Kafka consumers; subscribe later."""


class AuthenticationFailedError(KasockiError):
    """The token in the socket.io ``auth`` payload was refused (or tokens are not accepted)."""


class IdleTimeoutError(KasockiError):
    """The subscription was idle (no consume, no stream) for KASOCKI_IDLE_TIMEOUT; the server disconnects."""


class OriginNotAllowedError(KasockiError):
    """A browser on another origin asked for an HTTP stream, and KASOCKI_ALLOWED_ORIGINS does not list it."""


class ServerStoppingError(KasockiError):
    """This server process is stopping (a restart or a deploy): connect again, to another one."""


class KafkaError(KasockiError):
    """Kafka failed (broker unreachable, topic gone, ...); ``code`` is Kafka's error code name."""


class InternalError(KasockiError):
    """An unexpected server-side failure; details are logged, never sent."""
