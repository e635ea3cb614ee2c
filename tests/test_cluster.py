"""The process's admin client: lookups end whatever happens to the client meanwhile."""

from __future__ import annotations

import threading

from confluent_kafka.admin import AdminClient

from kasocki_app.cluster import Cluster


class WatchedCluster(Cluster):
    """Tells when its admin client has been handed to a lookup."""

    def __init__(self) -> None:
        super().__init__()
        self.handed_out = threading.Event()

    def admin(self) -> AdminClient:
        client = super().admin()
        self.handed_out.set()
        return client


def test_an_offset_lookup_ends_when_its_admin_client_is_reset_meanwhile(settings):
    # No broker answers there: the lookup is still in flight when the settings change.
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": "127.0.0.1:1"}
    settings.KASOCKI_KAFKA_TIMEOUT = 1
    cluster = WatchedCluster()
    outcome: list[BaseException] = []

    def look_up() -> None:
        try:
            cluster.log_ends([("some-topic", 0)])
        except Exception as exc:  # kept for the assertion
            outcome.append(exc)

    # A daemon thread: when the lookup never ends, the test fails instead of hanging the run.
    lookup = threading.Thread(target=look_up, name="lookup", daemon=True)
    lookup.start()
    assert cluster.handed_out.wait(10)
    cluster.reset()  # as a settings change does: the cluster lets go of its client
    lookup.join(15)
    assert not lookup.is_alive(), "the lookup still waits for a client that is gone"
    assert outcome and "Timed out" in str(outcome[0]), outcome
