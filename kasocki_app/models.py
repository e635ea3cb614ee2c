"""The topic whitelist that operators edit in the Django admin."""

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
