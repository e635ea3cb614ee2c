"""Check that Kasocki can serve: settings sane, broker reachable, whitelisted topics present."""

from __future__ import annotations

import asyncio
from typing import Any

from django.core import checks
from django.core.management.base import BaseCommand, CommandError

from kasocki_app import topics
from kasocki_app.cluster import cluster
from kasocki_app.conf import conf
from kasocki_app.exceptions import KafkaError


class Command(BaseCommand):
    help = "Check settings, that the Kafka broker answers and that every allowed topic exists; exit 1 if not."

    def handle(self, *args: Any, **options: Any) -> None:
        problems: list[str] = []
        errors = [e for e in checks.run_checks(tags=None) if e.id and e.id.startswith("kasocki_app.")]
        problems += [f"setting: {e.msg} ({e.id})" for e in errors if e.is_serious()]
        bootstrap = conf.kafka_config.get("bootstrap.servers", "?")
        try:
            existing = asyncio.run(cluster.topics(fresh=True))
        except KafkaError as exc:
            problems.append(f"Kafka at {bootstrap} is not reachable: {exc.message}")
            existing = None
        if existing is not None:
            self.stdout.write(f"Kafka at {bootstrap}: reachable, {counted(len(existing), 'topic')}")
            allowed = sorted(asyncio.run(self._all_allowed()))
            if not allowed:
                self.stdout.write("No topic is allowed yet (KASOCKI_ALLOWED_TOPICS or the admin whitelist).")
            for name in allowed:
                if name in existing:
                    self.stdout.write(f"  {name}: {counted(existing[name], 'partition')}")
                else:
                    problems.append(f"allowed topic {name!r} does not exist in Kafka")
        if problems:
            for problem in problems:
                self.stderr.write(f"problem: {problem}")
            raise CommandError(f"{counted(len(problems), 'problem')} found", returncode=1)
        self.stdout.write(self.style.SUCCESS("Kasocki is ready to serve."))

    @staticmethod
    async def _all_allowed() -> set[str]:
        """Every allowed topic, whatever its access rule."""
        return set(conf.allowed_topics) | {e.topic for e in await topics.entries()}


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is one: "1 partition", "0 partitions"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
