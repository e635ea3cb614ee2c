"""An orjson-backed stand-in for the ``json`` module, for python-socketio's ``json=`` option.

python-socketio calls ``dumps`` and expects ``str``; orjson returns bytes. The
option is process-wide (it sets the packet class's encoder), so set it once.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any, **kwargs: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # integers beyond 64 bits and other types orjson refuses
        return json.dumps(obj, separators=(",", ":"))


def loads(text: str | bytes, **kwargs: Any) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # raises the error socket.io expects for bad input
