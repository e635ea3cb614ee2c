"""The topic whitelist that operators edit in the Django admin, and the live connections it shows."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models

# Kafka's rule for topic names: at most 249 of [a-zA-Z0-9._-].
topic_name_validator = RegexValidator(
    r"^[a-zA-Z0-9._-]{1,249}$", "Kafka topic names use only a-z, A-Z, 0-9, '.', '_', '-'."
)
permission_validator = RegexValidator(r"^[\w]+\.[\w]+$", "Use the form app_label.codename.")


class WhitelistedTopic(models.Model):
    """A Kafka topic that socket.io clients may read (together with KASOCKI_ALLOWED_TOPICS)."""

    class Access(models.TextChoices):
        PUBLIC = "public", "anyone"
        AUTHENTICATED = "authenticated", "signed-in users"
        RESTRICTED = "restricted", "members of the groups below or holders of the permission"

    topic = models.CharField(max_length=249, unique=True, validators=[topic_name_validator])
    enabled = models.BooleanField(default=True, help_text="Disabled entries are ignored.")
    description = models.TextField(blank=True)
    access = models.CharField(max_length=16, choices=Access.choices, default=Access.PUBLIC)
    groups = models.ManyToManyField(Group, blank=True, help_text="For restricted topics: groups that may read it.")
    permission = models.CharField(
        max_length=255,
        blank=True,
        validators=[permission_validator],
        help_text="For restricted topics: a permission (app_label.codename) whose holders may read it.",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["topic"]
        verbose_name = "whitelisted topic"

    def __str__(self) -> str:
        return self.topic


class LiveProcess(models.Model):
    """A server process that publishes its live connections; its heartbeat says it still runs.

    Times come from the database's clock, so hosts need not agree on theirs. Another process
    removes this one's rows only once ``expires`` passed without a heartbeat (see registry_store.py).
    """

    process = models.CharField(max_length=255, unique=True, help_text="host:pid of the server process.")
    started = models.DateTimeField(help_text="When the process first published.")
    last_seen = models.DateTimeField(help_text="The process's latest heartbeat.")
    interval = models.FloatField(help_text="Seconds between its publications (KASOCKI_REGISTRY_SECONDS).")
    expires = models.DateTimeField(db_index=True, help_text="Counted as stopped if no heartbeat comes by then.")
    connections = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["process"]
        verbose_name = "live server process"

    def __str__(self) -> str:
        return self.process


class LiveConnection(models.Model):
    """A client (socket.io or HTTP stream) connected to one of the server processes, as that process last published it.

    Each process writes only its own rows, when they change (see registry.py); the admin reads
    them and asks for disconnects through ``DisconnectRequest``.
    """

    process = models.CharField(max_length=255, help_text="host:pid of the server process.")
    sid = models.CharField("socket.io sid", max_length=64)
    transport = models.CharField(
        max_length=16, default="socket.io", help_text="socket.io, or sse for an HTTP stream (/v2/stream/...)."
    )
    address = models.CharField("client address", max_length=255, blank=True)
    username = models.CharField("user", max_length=150, blank=True)
    subscriptions = models.JSONField(null=True, blank=True, help_text="Assigned partitions and starting offsets.")
    filters = models.JSONField(null=True, blank=True)
    delivered = models.PositiveBigIntegerField(default=0, help_text="Messages sent to the client.")
    partitions = models.JSONField(
        null=True,
        blank=True,
        help_text="Per assigned partition: the next offset to read and the lag behind the latest offset.",
    )
    connected_since = models.DateTimeField()
    updated = models.DateTimeField(help_text="When its process last wrote a change to this row.")

    class Meta:
        ordering = ["-connected_since"]
        verbose_name = "live connection"
        constraints = [models.UniqueConstraint(fields=["process", "sid"], name="kasocki_live_connection_unique")]

    def __str__(self) -> str:
        return f"{self.address or '?'} ({self.sid}) on {self.process}"


class DisconnectRequest(models.Model):
    """An admin's request that a process disconnect one of its clients.

    Apart from the connection's row, so that the process rewriting its rows never loses one;
    the process deletes it once the connection is gone.
    """

    process = models.CharField(max_length=255)
    sid = models.CharField("socket.io sid", max_length=64)
    requested = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "disconnect request"
        constraints = [models.UniqueConstraint(fields=["process", "sid"], name="kasocki_disconnect_request_unique")]

    def __str__(self) -> str:
        return f"disconnect {self.sid} on {self.process}"
