"""Message builders used by tests of KASOCKI_MESSAGE_BUILDER."""

from __future__ import annotations

from typing import Any

from kasocki_app.messages import decode_value


def envelope(message: Any) -> dict[str, Any] | None:
    """Wrap the value instead of merging metadata into it; skip values marked private."""
    value = decode_value(message.value())
    if value.get("private"):
        return None
    return {"data": value, "position": f"{message.topic()}/{message.partition()}/{message.offset()}"}
