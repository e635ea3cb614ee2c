"""Memory clients let go of goes back to the system: the trimmer, and what a closed session keeps."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from engineio import packet

from kasocki_app import memory
from kasocki_app.memory import Trimmer
from kasocki_app.polling import PACKET_OVERHEAD, CappedPollSocket, MeteredQueue, queued_bytes
from tests.fakes import EXPECTED_WITHIN


class Trims:
    """A malloc_trim that records its calls (from the thread it runs in) and can be held."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.threads: list[str] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, pad: int) -> int:
        self.release.wait(EXPECTED_WITHIN)
        self.calls.append(pad)
        self.threads.append(threading.current_thread().name)
        return 1


async def until(condition: Any, what: str) -> None:
    async with asyncio.timeout(EXPECTED_WITHIN):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kasocki_app.memory.DELAY_SECONDS", 0.01)
    monkeypatch.setattr("kasocki_app.memory.INTERVAL_SECONDS", 0.2)


async def test_clients_leaving_together_make_one_trim_off_the_loop(quick):
    trims = Trims()
    trimmer = Trimmer(trims)
    for _ in range(10):
        trimmer.soon()
    await until(lambda: trims.calls, "a trim")
    await asyncio.sleep(0.5)  # more than two intervals: no other trim comes
    await trimmer.close()
    assert trims.calls == [0] and trims.threads != [threading.current_thread().name]


async def test_trims_are_spaced_by_the_interval(quick):
    trims = Trims()
    trimmer = Trimmer(trims)
    loop = asyncio.get_running_loop()
    trimmer.soon()
    await until(lambda: len(trims.calls) == 1, "the first trim")
    first = loop.time()
    trimmer.soon()
    await until(lambda: len(trims.calls) == 2, "the second trim")
    assert loop.time() - first >= 0.2 * 0.9  # not before the interval (timer granularity aside)
    await trimmer.close()


async def test_one_trim_at_a_time_and_close_waits_for_it(quick):
    trims = Trims()
    trims.release.clear()  # the first trim holds
    trimmer = Trimmer(trims)
    trimmer.soon()
    await until(lambda: trimmer.trims == 1, "a trim under way")
    closing = asyncio.ensure_future(trimmer.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # waits for the trim under way
    trims.release.set()
    await asyncio.wait_for(closing, EXPECTED_WITHIN)
    assert trims.calls == [0]


async def test_without_malloc_trim_nothing_is_done():
    trimmer = Trimmer(None)
    trimmer.soon()
    await trimmer.close()
    assert trimmer.trims == 0


async def test_the_process_trimmer_finds_glibcs_malloc_trim():
    # The project runs on glibc (Debian): where it does not, the trimmer does nothing.
    assert memory.malloc_trim is not None
    assert memory.malloc_trim(0) in (0, 1)


class Session(CappedPollSocket):
    """An engine.io session as the server makes it (queue and all), without a client."""

    def __init__(self) -> None:
        self.queue = MeteredQueue()
        self.closed = self.closing = self.connected = self.upgraded = self.upgrading = False
        self.sid = "eio-1"

        class Server:
            @staticmethod
            async def _trigger_event(*_args: Any, **_kwargs: Any) -> None:
                return None

            class reason:
                SERVER_DISCONNECT = "server disconnect"

        self.server = Server()


def message(text: str) -> packet.Packet:
    return packet.Packet(packet.MESSAGE, data=text)


async def test_a_sessions_queue_counts_what_waits_in_it_as_packets_come_and_go():
    queue = MeteredQueue()
    queue.put_nowait(message("42" + "x" * 100))
    queue.put_nowait(packet.Packet(packet.PING))
    queue.put_nowait(None)
    assert queue.bytes == 102 + PACKET_OVERHEAD
    queue.get_nowait()
    assert queue.bytes == 0


async def test_a_session_closed_at_once_lets_go_of_the_messages_it_queued():
    # A stalled client's session sat in reference cycles after it left, holding its whole backlog until a
    # full garbage collection: the messages go when the session closes.
    session = Session()
    for i in range(100):
        await session.queue.put(message(f"42{i}"))
    session.__dict__["carried"] = [message("42carried")]
    assert queued_bytes(session) > 100 * PACKET_OVERHEAD
    await session.close(wait=False, abort=True)
    assert queued_bytes(session) == 0 and session.__dict__["carried"] == []
    assert list(session.queue._queue) == [None]  # what ends a poll in progress stays
