"""Django system checks for the KASOCKI_* settings (``manage.py check``)."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.utils.module_loading import import_string

from .conf import DEFAULTS, RESET_POLICIES, conf

# Kafka consumers one process can hold: below librdkafka's thread-local-storage ceiling (about 1,012
# clients), leaving room for the admin client and anything else of librdkafka in the process.
CONSUMER_CEILING = 1000
# Numeric settings where 0 is documented as "never" rather than a mistake.
ZERO_MEANS_NEVER = frozenset({"KASOCKI_IDLE_TIMEOUT"})


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    config = getattr(settings, "KASOCKI_KAFKA_CONFIG", None)
    if config is not None and (not isinstance(config, dict) or "bootstrap.servers" not in config):
        errors.append(
            Error(
                "KASOCKI_KAFKA_CONFIG must be a dict of librdkafka settings with 'bootstrap.servers'.",
                hint="For example {'bootstrap.servers': 'kafka1:9092'}.",
                id="kasocki_app.E001",
            )
        )
    topics = getattr(settings, "KASOCKI_ALLOWED_TOPICS", [])
    if not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) and t for t in topics):
        errors.append(
            Error(
                "KASOCKI_ALLOWED_TOPICS must be a list of topic names.",
                hint="For example ['recentchange', 'page-create'].",
                id="kasocki_app.E002",
            )
        )
    if conf.reset_policy not in RESET_POLICIES:
        errors.append(
            Error(
                f"KASOCKI_RESET_POLICY must be one of {', '.join(RESET_POLICIES)}.",
                hint="It says where to start when a requested offset is not in the log.",
                id="kasocki_app.E003",
            )
        )
    try:
        builder = import_string(conf.message_builder)
    except ImportError:
        builder = None
    if not callable(builder):
        errors.append(
            Error(
                "KASOCKI_MESSAGE_BUILDER must be the dotted path of a callable.",
                hint="The default is 'kasocki_app.messages.build_message'.",
                id="kasocki_app.E004",
            )
        )
    for name, default in DEFAULTS.items():
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            value = getattr(settings, name, default)
            never = name in ZERO_MEANS_NEVER
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < 0 or (value == 0 and not never):
                errors.append(
                    Error(
                        f"{name} must be {'zero (never) or ' if never else ''}a positive number.",
                        hint=f"The default is {default}.",
                        id="kasocki_app.E005",
                    )
                )
    origins = getattr(settings, "KASOCKI_ALLOWED_ORIGINS", [])
    if not isinstance(origins, (list, tuple)) or not all(isinstance(o, str) for o in origins):
        errors.append(
            Error(
                "KASOCKI_ALLOWED_ORIGINS must be a list of origins such as 'https://example.org'.",
                hint="Leave it empty to allow the same origin only; '*' allows every origin.",
                id="kasocki_app.E006",
            )
        )
    proxies = getattr(settings, "KASOCKI_TRUSTED_PROXIES", [])
    try:
        for proxy in proxies:
            ipaddress.ip_network(proxy, strict=False)
    except (TypeError, ValueError):
        errors.append(
            Error(
                "KASOCKI_TRUSTED_PROXIES must be a list of IP addresses or networks.",
                hint="For example ['10.0.0.0/8', '127.0.0.1']; X-Forwarded-For is believed only from these.",
                id="kasocki_app.E007",
            )
        )
    authenticator = conf.token_authenticator
    if authenticator:
        try:
            callable_ok = callable(import_string(authenticator))
        except ImportError:
            callable_ok = False
        if not callable_ok:
            errors.append(
                Error(
                    "KASOCKI_TOKEN_AUTHENTICATOR must be the dotted path of a callable.",
                    hint="It is called with the token and returns a user or None.",
                    id="kasocki_app.E008",
                )
            )
    consumers = getattr(settings, "KASOCKI_MAX_CONSUMERS", DEFAULTS["KASOCKI_MAX_CONSUMERS"])
    if isinstance(consumers, int) and consumers > CONSUMER_CEILING:
        errors.append(
            Error(
                f"KASOCKI_MAX_CONSUMERS must be at most {CONSUMER_CEILING}.",
                hint="librdkafka takes a thread-local-storage key per client and glibc allows 1,024 per process: "
                "past about 1,012 clients in one process consumers cannot be created. Run more processes.",
                id="kasocki_app.E009",
            )
        )
    if not isinstance(getattr(settings, "KASOCKI_LIVE_TAIL", True), bool):
        errors.append(
            Error(
                "KASOCKI_LIVE_TAIL must be True or False.",
                hint="True (the default) shares one Kafka reader per partition; False gives every connection its own.",
                id="kasocki_app.E010",
            )
        )
    return errors
