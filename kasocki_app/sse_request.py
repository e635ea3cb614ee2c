"""What an HTTP stream asks for: its topics and start positions, its filter and its format.

Start positions, in this precedence: a ``Last-Event-ID`` header (the id of the last
event a client received: a JSON array of ``{"topic", "partition", "offset"}`` and/or
``{"topic", "partition", "timestamp"}``), then ``?since=`` (epoch milliseconds or an
ISO 8601 date-time) for every partition of the URL's topics, then the latest offsets.
Every bad input raises the error socket.io clients get for it (docs/protocol.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .exceptions import InvalidArgumentError, InvalidAssignmentError, InvalidFilterError
from .protocol import is_int, parse_subscription

# The longest Last-Event-ID read: KASOCKI_MAX_PARTITIONS entries of long topic names fit well below it.
MAX_EVENT_ID_BYTES = 256 * 1024
# KafkaSSE writes -1 for a partition it had no message of: read it as "the latest offset".
LATEST = -1


@dataclass(frozen=True)
class StreamRequest:
    """A parsed ``GET /v2/stream/<topics>``."""

    subscription: list[Any]  # a ``subscribe`` payload, checked already
    filter: Any  # the filter object as sent (None: no filter), validated by the connection's pipeline
    ndjson: bool  # newline-delimited JSON instead of text/event-stream


def parse_stream_request(topics: str, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> StreamRequest:
    """Parse the URL's topics, ``since``, ``filter``, ``Last-Event-ID`` and ``Accept``; raises a KasockiError."""
    names = parse_topics(topics)
    event_id = (headers.get("last-event-id") or "").strip()
    since = _one(query, "since")
    subscription: list[Any]
    if event_id and event_id != "[]":
        subscription = parse_event_id(event_id)
    elif since is not None:
        milliseconds = parse_since(since)
        subscription = [{"topic": name, "timestamp": milliseconds} for name in names]
    else:
        subscription = list(names)
    parse_subscription(subscription)  # every error before the connection opens
    raw_filter = _one(query, "filter")
    return StreamRequest(subscription, parse_filter(raw_filter), wants_ndjson(headers.get("accept", "")))


def parse_topics(text: str) -> list[str]:
    """The comma-separated topic names of the URL."""
    names = [name.strip() for name in text.split(",")]
    if not text or any(not name for name in names):
        raise InvalidAssignmentError("the URL must name topics, separated by commas: /v2/stream/topic1,topic2")
    return names


def parse_event_id(text: str) -> list[dict[str, Any]]:
    """Start positions from a ``Last-Event-ID``: an offset or a timestamp for each named partition."""
    if len(text) > MAX_EVENT_ID_BYTES:
        raise InvalidAssignmentError(f"Last-Event-ID is longer than {MAX_EVENT_ID_BYTES} bytes")
    try:
        entries = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidAssignmentError("Last-Event-ID must be a JSON array of positions") from None
    if not isinstance(entries, list) or not entries:
        raise InvalidAssignmentError(
            'Last-Event-ID must be a non-empty JSON array of {"topic", "partition", "offset"} '
            'or {"topic", "partition", "timestamp"} objects'
        )
    items: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict) or "partition" not in entry or ("offset" in entry) == ("timestamp" in entry):
            raise InvalidAssignmentError(
                "each Last-Event-ID entry needs 'topic', 'partition' and either 'offset' or 'timestamp'"
            )
        if entry.get("offset") == LATEST and is_int(entry["offset"]):
            entry = {key: value for key, value in entry.items() if key != "offset"}
        items.append(entry)
    try:
        parse_subscription(items)
    except InvalidAssignmentError as exc:
        raise InvalidAssignmentError(f"Last-Event-ID: {exc.message}", **exc.details) from None
    return items


def parse_since(text: str) -> int:
    """``since`` as epoch milliseconds: an integer of them, or an ISO 8601 date-time (UTC when it names no zone)."""
    value = text.strip()
    if value.isdigit():
        milliseconds = int(value)
    else:
        moment = _iso_date_time(value)
        if moment is None:
            raise InvalidArgumentError(
                "'since' must be milliseconds since the epoch or an ISO 8601 date-time such as "
                "2026-12-07T23:10:34Z or, in a URL, 2026-12-07T23:10:34%2B01:00 (write '+' as %2B: "
                f"a bare '+' means a space), got {text[:64]!r}"
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        milliseconds = int(moment.timestamp() * 1000)
    if not 0 <= milliseconds < 2**63:
        raise InvalidArgumentError("'since' must not be before 1970")
    return milliseconds


# A query string decodes '+' to a space, so "...T23:10:34+01:00" pasted into a URL arrives as
# "...T23:10:34 01:00". After a time of day (a 'T' or a space before it), a space and then
# hh:mm or hhmm can only be that offset; "2026-12-07 01:00" has no time before it, so it stays 01:00.
_SPACED_OFFSET = re.compile(r"(?P<moment>\S*[T ]\S+) (?P<offset>\d{2}:?\d{2})")


def _iso_date_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    spaced = _SPACED_OFFSET.fullmatch(value)
    if spaced is None:
        return None
    try:
        return datetime.fromisoformat(f"{spaced['moment']}+{spaced['offset']}")
    except ValueError:
        return None


def parse_filter(text: str | None) -> Any:
    """The filter object of ``?filter=`` (URL-decoded already); its rules are checked by the pipeline."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidFilterError("'filter' must be a JSON object (URL-encoded)") from None


def wants_ndjson(accept: str) -> bool:
    """Newline-delimited JSON when the client accepts JSON and not event streams (EventStreams does this)."""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if "text/event-stream" in types:
        return False
    return bool(types & {"application/json", "application/x-ndjson"})


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidArgumentError(f"give '{name}' once, not {len(values)} times")
    return values[0]
