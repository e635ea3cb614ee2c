"""Kasocki's settings, read lazily from Django settings with defaults.

Every name here is a Django setting; see the README's configuration reference.
Reading lazily keeps ``override_settings`` working in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # librdkafka configuration shared by every consumer and admin client.
    "KASOCKI_KAFKA_CONFIG": None,  # None: {"bootstrap.servers": KAFKA_BOOTSTRAP_SERVERS}
    "KASOCKI_ALLOWED_TOPICS": [],
    "KASOCKI_RESET_POLICY": "latest",
    "KASOCKI_MESSAGE_BUILDER": "kasocki_app.messages.build_message",
    "KASOCKI_ALLOWED_ORIGINS": [],
    "KASOCKI_WHITELIST_CACHE_SECONDS": 2.0,
    "KASOCKI_METADATA_CACHE_SECONDS": 2.0,
    "KASOCKI_KAFKA_TIMEOUT": 10.0,
    "KASOCKI_CONSUMER_CLOSE_TIMEOUT": 5.0,
    "KASOCKI_KAFKA_THREADS": 16,
    # Records a stream takes and emits per step before other clients get their turn (and read per poll): with ten
    # clients catching up, 500 made every round of the event loop ~0.5 s, and clients at the head waited as long.
    "KASOCKI_CONSUME_BATCH_SIZE": 100,
    "KASOCKI_MAX_ASSIGNMENTS": 256,
    "KASOCKI_MAX_PARTITIONS": 256,
    "KASOCKI_MAX_FILTER_KEYS": 32,
    "KASOCKI_MAX_FILTER_PATH_DEPTH": 16,
    "KASOCKI_MAX_FILTER_LIST_LENGTH": 100,
    "KASOCKI_MAX_PATTERN_LENGTH": 1000,
    "KASOCKI_MAX_STRING_LENGTH": 4096,
    "KASOCKI_MAX_PAYLOAD_BYTES": 100_000,
    "KASOCKI_MAX_BATCH": 1000,
    "KASOCKI_MAX_INFLIGHT_REQUESTS": 16,
    "KASOCKI_MAX_BACKLOG_BYTES": 8 * 1024 * 1024,
    "KASOCKI_SLOW_CLIENT_TIMEOUT": 30.0,
    "KASOCKI_ASSIGNMENT_CHECK_SECONDS": 1.0,
    # How often each process publishes its connections for the admin (and drops dead processes' rows).
    "KASOCKI_REGISTRY_SECONDS": 2.0,
    "KASOCKI_MAX_CONNECTIONS": 5000,
    "KASOCKI_MAX_CONNECTIONS_PER_IP": 50,
    "KASOCKI_MAX_CONNECTION_RATE_PER_IP": 20,
    "KASOCKI_MAX_CONSUMERS": 900,
    # One shared reader per process for the partitions clients read at the head (tail.py); off:
    # every connection has its own consumer. Each tailed partition keeps its newest records.
    "KASOCKI_LIVE_TAIL": True,
    "KASOCKI_TAIL_RECORDS": 10_000,
    "KASOCKI_TAIL_BYTES": 8 * 1024 * 1024,
    "KASOCKI_TAIL_GRACE_SECONDS": 30.0,
    "KASOCKI_IDLE_TIMEOUT": 900.0,
    # HTTP streams (/v2/stream/...): an id-only event when no message carried the position this long,
    # and a comment line this often, so that proxies do not cut idle streams.
    "KASOCKI_SSE_PROGRESS_SECONDS": 5.0,
    "KASOCKI_SSE_HEARTBEAT_SECONDS": 5.0,
    "KASOCKI_TRUSTED_PROXIES": [],
    "KASOCKI_TOKEN_AUTHENTICATOR": "",
    # Who may read /metrics: peers in these networks, or anyone with the bearer token (if set).
    "KASOCKI_METRICS_NETWORKS": ["127.0.0.0/8", "::1/128"],
    "KASOCKI_METRICS_TOKEN": "",
}

RESET_POLICIES = ("latest", "earliest")


class Settings:
    """Typed, lazily read view of the ``KASOCKI_*`` settings."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        # Cached: the stream loop reads settings on every poll, and LazySettings lookups
        # showed in profiles. signals.py clears the cache when a setting changes.
        try:
            return self._values[name]
        except KeyError:
            value = self._values[name] = getattr(settings, name, DEFAULTS[name])
            return value

    def reload(self) -> None:
        """Forget cached values (Django's setting_changed signal calls this)."""
        self._values.clear()

    @property
    def kafka_config(self) -> dict[str, Any]:
        config = self._get("KASOCKI_KAFKA_CONFIG")
        if config is None:
            return {"bootstrap.servers": getattr(settings, "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")}
        return dict(config)

    @property
    def allowed_topics(self) -> list[str]:
        return list(self._get("KASOCKI_ALLOWED_TOPICS"))

    @property
    def reset_policy(self) -> str:
        return str(self._get("KASOCKI_RESET_POLICY"))

    @property
    def message_builder(self) -> str:
        return str(self._get("KASOCKI_MESSAGE_BUILDER"))

    @property
    def allowed_origins(self) -> list[str]:
        return list(self._get("KASOCKI_ALLOWED_ORIGINS"))

    @property
    def whitelist_cache_seconds(self) -> float:
        return float(self._get("KASOCKI_WHITELIST_CACHE_SECONDS"))

    @property
    def metadata_cache_seconds(self) -> float:
        return float(self._get("KASOCKI_METADATA_CACHE_SECONDS"))

    @property
    def kafka_timeout(self) -> float:
        return float(self._get("KASOCKI_KAFKA_TIMEOUT"))

    @property
    def consumer_close_timeout(self) -> float:
        return float(self._get("KASOCKI_CONSUMER_CLOSE_TIMEOUT"))

    @property
    def kafka_threads(self) -> int:
        return int(self._get("KASOCKI_KAFKA_THREADS"))

    @property
    def consume_batch_size(self) -> int:
        return int(self._get("KASOCKI_CONSUME_BATCH_SIZE"))

    @property
    def max_assignments(self) -> int:
        return int(self._get("KASOCKI_MAX_ASSIGNMENTS"))

    @property
    def max_partitions(self) -> int:
        return int(self._get("KASOCKI_MAX_PARTITIONS"))

    @property
    def max_filter_keys(self) -> int:
        return int(self._get("KASOCKI_MAX_FILTER_KEYS"))

    @property
    def max_filter_path_depth(self) -> int:
        return int(self._get("KASOCKI_MAX_FILTER_PATH_DEPTH"))

    @property
    def max_filter_list_length(self) -> int:
        return int(self._get("KASOCKI_MAX_FILTER_LIST_LENGTH"))

    @property
    def max_pattern_length(self) -> int:
        return int(self._get("KASOCKI_MAX_PATTERN_LENGTH"))

    @property
    def max_string_length(self) -> int:
        return int(self._get("KASOCKI_MAX_STRING_LENGTH"))

    @property
    def max_payload_bytes(self) -> int:
        return int(self._get("KASOCKI_MAX_PAYLOAD_BYTES"))

    @property
    def max_batch(self) -> int:
        return int(self._get("KASOCKI_MAX_BATCH"))

    @property
    def max_inflight_requests(self) -> int:
        return int(self._get("KASOCKI_MAX_INFLIGHT_REQUESTS"))

    @property
    def max_backlog_bytes(self) -> int:
        return int(self._get("KASOCKI_MAX_BACKLOG_BYTES"))

    @property
    def slow_client_timeout(self) -> float:
        return float(self._get("KASOCKI_SLOW_CLIENT_TIMEOUT"))

    @property
    def assignment_check_seconds(self) -> float:
        return float(self._get("KASOCKI_ASSIGNMENT_CHECK_SECONDS"))

    @property
    def registry_seconds(self) -> float:
        """Seconds between two publications of this process's live connections (registry.py)."""
        return float(self._get("KASOCKI_REGISTRY_SECONDS"))

    @property
    def max_connections(self) -> int:
        return int(self._get("KASOCKI_MAX_CONNECTIONS"))

    @property
    def max_connections_per_ip(self) -> int:
        return int(self._get("KASOCKI_MAX_CONNECTIONS_PER_IP"))

    @property
    def max_connection_rate_per_ip(self) -> int:
        return int(self._get("KASOCKI_MAX_CONNECTION_RATE_PER_IP"))

    @property
    def max_consumers(self) -> int:
        return int(self._get("KASOCKI_MAX_CONSUMERS"))

    @property
    def live_tail(self) -> bool:
        return bool(self._get("KASOCKI_LIVE_TAIL"))

    @property
    def tail_records(self) -> int:
        """Records each tailed partition keeps, at most."""
        return int(self._get("KASOCKI_TAIL_RECORDS"))

    @property
    def tail_bytes(self) -> int:
        """Bytes each tailed partition keeps, at most (record values and their encoded messages)."""
        return int(self._get("KASOCKI_TAIL_BYTES"))

    @property
    def tail_grace_seconds(self) -> float:
        """How long a tailed partition nobody reads stays open."""
        return float(self._get("KASOCKI_TAIL_GRACE_SECONDS"))

    @property
    def idle_timeout(self) -> float:
        """Seconds a subscription may sit unused before it is dropped; 0 turns reaping off."""
        return float(self._get("KASOCKI_IDLE_TIMEOUT"))

    @property
    def sse_progress_seconds(self) -> float:
        return max(0.05, float(self._get("KASOCKI_SSE_PROGRESS_SECONDS")))

    @property
    def sse_heartbeat_seconds(self) -> float:
        return max(0.05, float(self._get("KASOCKI_SSE_HEARTBEAT_SECONDS")))

    @property
    def trusted_proxies(self) -> list[str]:
        return list(self._get("KASOCKI_TRUSTED_PROXIES"))

    @property
    def token_authenticator(self) -> str:
        return str(self._get("KASOCKI_TOKEN_AUTHENTICATOR") or "")

    @property
    def metrics_networks(self) -> list[str]:
        return list(self._get("KASOCKI_METRICS_NETWORKS"))

    @property
    def metrics_token(self) -> str:
        return str(self._get("KASOCKI_METRICS_TOKEN") or "")


conf = Settings()
