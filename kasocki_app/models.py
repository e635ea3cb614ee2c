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


class LiveConnection(models.Model):
    """A socket.io client connected to one of the server processes, as that process last published it.

    Each process keeps its own rows current every KASOCKI_REGISTRY_SECONDS (see registry.py);
    the admin reads them and may ask for a disconnect.
    """

    process = models.CharField(max_length=255, db_index=True, help_text="host:pid of the server process.")
    sid = models.CharField("socket.io sid", max_length=64)
    address = models.CharField("client address", max_length=255, blank=True)
    username = models.CharField("user", max_length=150, blank=True)
    subscriptions = models.JSONField(null=True, blank=True, help_text="Assigned partitions and starting offsets.")
    filters = models.JSONField(null=True, blank=True)
    delivered = models.PositiveBigIntegerField(default=0, help_text="Messages sent to the client.")
    lag = models.JSONField(
        null=True, blank=True, help_text='Latest offset minus the next offset to read, by "topic/partition".'
    )
    connected_since = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True, help_text="When the owning process last published this row.")
    disconnect_requested = models.BooleanField(default=False)

    class Meta:
        ordering = ["-connected_since"]
        verbose_name = "live connection"
        constraints = [models.UniqueConstraint(fields=["process", "sid"], name="kasocki_live_connection_unique")]

    def __str__(self) -> str:
        return f"{self.address or '?'} ({self.sid}) on {self.process}"
