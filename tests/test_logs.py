"""Every log line of a connection carries its sid and client address; JSON lines by a setting."""

from __future__ import annotations

import json
import logging

import pytest

from kasocki_app.logs import ContextFilter, JsonFormatter, bind

pytestmark = pytest.mark.django_db(transaction=True)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured():
    handler = Capture()
    logger = logging.getLogger("kasocki_app")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def test_connection_lines_carry_sid_and_client(make_topic, allow, connect, captured):
    topic = make_topic()
    allow(topic)
    client = await connect()
    await client.ok("subscribe", topic)
    sid = client.sio.get_sid()
    lines = [r for r in captured if "subscribed" in r.getMessage()]
    assert lines and all((r.sid, r.client) == (sid, "127.0.0.1") for r in lines)
    connected = [r for r in captured if "connected from" in r.getMessage() and r.sid == sid]
    assert connected and connected[0].client == "127.0.0.1"


def test_json_formatter_writes_one_object_per_line():
    bind("abc", "192.0.2.1")
    record = logging.LogRecord("kasocki_app.service", logging.WARNING, __file__, 1, "skipped %s", ("x",), None)
    ContextFilter().filter(record)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "skipped x" and entry["sid"] == "abc" and entry["client"] == "192.0.2.1"
    assert entry["level"] == "WARNING" and entry["logger"] == "kasocki_app.service"
