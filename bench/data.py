"""The benchmark's records: JSON objects of about 1 KB with nested fields.

Records are built from a small pool of varied bodies so that producing hundreds
of thousands of them costs little; ``id`` and ``bucket`` differ in every record.
``bucket`` is uniform in 0..99, so the filter ``{"bucket": 7}`` passes about 1 %.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

FILTER_BUCKET = 7
TARGET_BYTES = 1000

_WORDS = (
    "kafka", "socket", "stream", "offset", "partition", "topic", "broker", "replica", "leader", "fetch",
    "batch", "consumer", "producer", "revision", "article", "talk", "page", "edit", "bot", "user", "group",
    "category", "template", "image", "summary", "history", "diff", "merge", "revert", "patrol", "protect",
    "block", "rename", "upload", "import", "review", "draft", "archive", "index", "search",
)  # fmt: skip
_TAGS = ("mobile edit", "visualeditor", "reverted", "mw-undo", "mw-rollback", "discussiontools", "app edit")
_GROUPS = ("*", "user", "autoconfirmed", "extendedconfirmed", "sysop", "bot", "rollbacker")
_DOMAINS = ("en.example.org", "de.example.org", "fr.example.org", "commons.example.org", "www.example.net")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _body(rng: random.Random) -> dict[str, Any]:
    domain = rng.choice(_DOMAINS)
    title = _text(rng, rng.randint(1, 4)).title().replace(" ", "_")
    user_id = rng.randint(1, 5_000_000)
    rev = rng.randint(10_000_000, 900_000_000)
    return {
        "type": rng.choice(("edit", "new", "log", "categorize")),
        "meta": {
            "uri": f"https://{domain}/wiki/{title}",
            "request_id": f"{rng.getrandbits(128):032x}",
            "domain": domain,
            "stream": "bench.page-change",
            "dt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + rng.randint(0, 10**7))),
        },
        "performer": {
            "user_id": user_id,
            "user_text": f"User{user_id}",
            "user_groups": rng.sample(_GROUPS, rng.randint(1, 4)),
            "user_is_bot": rng.random() < 0.1,
            "user_edit_count": rng.randint(0, 200_000),
        },
        "page": {
            "page_id": rng.randint(1, 70_000_000),
            "page_title": title,
            "page_namespace": rng.choice((0, 0, 0, 1, 2, 4, 14)),
            "revision": {
                "rev_id": rev,
                "rev_parent_id": rev - rng.randint(1, 10_000),
                "rev_len": rng.randint(100, 200_000),
                "rev_sha1": f"{rng.getrandbits(160):040x}",
                "rev_minor_edit": rng.random() < 0.3,
            },
        },
        "comment": _text(rng, rng.randint(20, 40)),
        "tags": rng.sample(_TAGS, rng.randint(0, 3)),
        "stats": {"added": rng.randint(0, 5000), "removed": rng.randint(0, 5000), "score": round(rng.random(), 6)},
    }


def _pad(body: dict[str, Any]) -> dict[str, Any]:
    """Bring the serialized body (with id and bucket) to about TARGET_BYTES."""
    size = len(orjson.dumps(body)) + len(b',"id":1234567,"bucket":42')
    if size < TARGET_BYTES:
        body["page"]["summary"] = ("x" * (TARGET_BYTES - size - len(',"summary":""')))[:TARGET_BYTES]
    return body


class Records:
    """A deterministic source of record dicts and their JSON bytes."""

    def __init__(self, seed: int = 1, pool_size: int = 512) -> None:
        self._rng = random.Random(seed)
        self._pool = [_pad(_body(self._rng)) for _ in range(pool_size)]

    def record(self, index: int, bucket: int | None = None) -> dict[str, Any]:
        body = self._pool[index % len(self._pool)]
        return {"id": index, "bucket": self._rng.randrange(100) if bucket is None else bucket, **body}

    def value(self, index: int, bucket: int | None = None, **extra: Any) -> bytes:
        record = self.record(index, bucket)
        if extra:
            record.update(extra)
        return orjson.dumps(record)


def delivered_shape(record: dict[str, Any], topic: str, partition: int, offset: int) -> dict[str, Any]:
    """What the server delivers for ``record``: the object plus its ``_kafka`` metadata."""
    return {
        **record,
        "_kafka": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": int(time.time() * 1000),
            "key": None,
        },
    }
