"""Prometheus counters of one server process (served at /metrics).

Counters are updated once per batch on the hot path, never per message where it
can be avoided; the gauges (connections, consumers, lag) are computed at scrape
time by ``collector.py``. Each process serves its own figures: scrape every worker.
This module imports nothing of the app, so that every module can count.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERED = Counter("kasocki_messages_delivered", "Messages delivered to clients (message, messages, consume).")
FILTERED = Counter("kasocki_messages_filtered", "Messages read from Kafka that a client's filter dropped.")
SKIPPED = Counter("kasocki_messages_skipped", "Records skipped because they could not be delivered.", ["reason"])
BYTES_SENT = Counter("kasocki_bytes_sent", "Bytes of socket.io packets and HTTP stream events sent to clients.")
ERRORS = Counter("kasocki_errors", "Errors reported to clients, by error name.", ["name"])
CONSUMERS_ABANDONED = Counter("kasocki_consumers_abandoned", "Kafka consumers whose close did not finish in time.")
EMIT_BATCH = Histogram(
    "kasocki_emit_batch_size",
    "Messages taken from Kafka per stream-loop step.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
TAIL_RECORDS = Counter("kasocki_tail_records", "Records the live tails read from Kafka (one read per process).")
FILTER_EVALUATIONS = Counter(
    "kasocki_filter_evaluations", "Filter evaluations: once per record and distinct filter on the live tail."
)
ENCODES = Counter("kasocki_message_encodes", "Messages encoded as JSON: once per record on the live tail.")
HANDOVERS = Counter("kasocki_handovers", "Connections that caught up on their own consumer and joined a live tail.")
DEMOTIONS = Counter("kasocki_demotions", "Connections that fell behind a live tail's records and read on their own.")
SSE_STREAMS = Counter("kasocki_sse_streams", "HTTP streams (/v2/stream/...) answered, by status.", ["status"])
SSE_PROGRESS = Counter("kasocki_sse_progress_events", "Id-only events that carried an HTTP stream's position forward.")
