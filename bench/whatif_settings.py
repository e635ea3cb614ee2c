"""Django settings for a what-if run, ``bench/run.py --kafka-config JSON``.

The project's own settings, plus extra librdkafka settings (from the
KASOCKI_BENCH_KAFKA_CONFIG environment variable, a JSON object) merged into
KASOCKI_KAFKA_CONFIG, which the server's consumers apply over their defaults.
Used only when that option is given; a normal run uses kasocki_project.settings.
"""

from __future__ import annotations

import json
import os

from kasocki_project.settings import *  # noqa: F403
from kasocki_project.settings import KASOCKI_KAFKA_CONFIG

KASOCKI_KAFKA_CONFIG = {**KASOCKI_KAFKA_CONFIG, **json.loads(os.environ.get("KASOCKI_BENCH_KAFKA_CONFIG") or "{}")}
