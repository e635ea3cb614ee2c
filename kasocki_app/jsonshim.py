"""Fast socket.io serialisation: an orjson stand-in for ``json`` and a packet class using it.

python-socketio calls ``dumps`` and expects ``str``; orjson returns bytes. Its ``json=``
option sets the encoder on the packet class, which is process-wide for the default class,
so Kasocki passes its own ``JsonPacket`` class as the serializer and sets ``json`` there.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from socketio import packet


def dumps(obj: Any, **kwargs: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # integers beyond 64 bits and other types orjson refuses
        return json.dumps(obj, separators=(",", ":"))


def loads(text: str | bytes, **kwargs: Any) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)  # raises the error socket.io expects for bad input
        except RecursionError:  # nesting orjson refused too: treat it as bad input, not a crash
            raise ValueError("JSON nested too deeply") from None


class JsonPacket(packet.Packet):  # type: ignore[misc]  # python-socketio ships no type information
    """socket.io packets whose outgoing data is never binary.

    Everything Kasocki sends is decoded JSON or its own dicts, never bytes, so the
    recursive scan for binary attachments python-socketio makes on every outgoing
    packet (a third of the time of a consume ack) is skipped. Incoming packets are
    decoded as usual.
    """

    def __init__(
        self,
        packet_type: int = packet.EVENT,
        data: Any = None,
        namespace: str | None = None,
        id: int | None = None,
        binary: bool | None = None,
        encoded_packet: Any = None,
    ) -> None:
        if binary is None and encoded_packet is None:
            binary = False
        super().__init__(packet_type, data, namespace, id, binary, encoded_packet)
