import hashlib
import secrets

from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


def hash_write_key(key: str) -> str:
    # Write keys are 256-bit random tokens, so a plain SHA-256 is enough (no salt, no stretching)
    # and it keeps the lookup an indexed equality.
    return hashlib.sha256(key.encode()).hexdigest()


class SourceQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class Source(models.Model):
    """Where people and events come from. `name` doubles as the Track API site id."""

    name = models.SlugField(max_length=64, unique=True)
    write_key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_hint = models.CharField(
        max_length=8, editable=False, help_text="Last characters of the key, to tell keys apart."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = SourceQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @staticmethod
    def new_write_key() -> str:
        return "ds_" + secrets.token_urlsafe(32)

    def set_write_key(self, key: str) -> None:
        self.write_key_hash = hash_write_key(key)
        self.key_hint = key[-4:]

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Person(models.Model):
    """One customer profile, keyed by the Customer.io customer id."""

    customer_id = models.CharField(max_length=150, unique=True)
    email = models.CharField(max_length=254, blank=True, default="")
    phone = models.CharField(max_length=64, blank=True, default="", db_index=True)
    cio_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    attributes = models.JSONField(default=dict, blank=True)
    is_test = models.BooleanField(
        default=False, help_text="Internal test account: receives 'Send test cohort' syncs."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "people"
        indexes = [models.Index(Lower("email"), name="person_email_lower")]

    def __str__(self):
        return self.customer_id


class Event(models.Model):
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="events")
    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="events")
    name = models.CharField(max_length=255)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    properties = models.JSONField(default=dict, blank=True)
    message_id = models.CharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "message_id"], name="event_message_id_unique")
        ]
        indexes = [
            # windowed counts and property filters for one person and one event name
            models.Index(fields=["person", "name", "occurred_at"], name="event_person_name_time"),
            # "everyone who did X in the window" when the aggregate is not enough (min_count, where)
            models.Index(fields=["name", "occurred_at"], name="event_name_time"),
        ]

    def __str__(self):
        return f"{self.name} by {self.person_id} at {self.occurred_at:%Y-%m-%d %H:%M}"


class EventStat(models.Model):
    """Per person, per event name: first time, last time and count, kept current on ingest.

    Rules such as "last Order Completed between 60 and 90 days ago" or "Added to Cart within
    2h" read these rows through an index instead of scanning the event table.
    """

    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="event_stats")
    name = models.CharField(max_length=255)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["person", "name"], name="eventstat_person_name_unique")
        ]
        indexes = [
            models.Index(fields=["name", "last_at"], name="eventstat_name_last"),
            models.Index(fields=["name", "first_at"], name="eventstat_name_first"),
        ]

    def __str__(self):
        return f"{self.name} x{self.count} for {self.person_id}"


class Erasure(models.Model):
    """What is left of an erased person: enough to prove the erasure, nothing to identify them."""

    customer_id_hash = models.CharField(max_length=64, db_index=True)
    source = models.ForeignKey(Source, null=True, on_delete=models.SET_NULL)
    erased_at = models.DateTimeField(default=timezone.now)
    events_deleted = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"erasure {self.customer_id_hash[:12]} at {self.erased_at:%Y-%m-%d %H:%M}"
