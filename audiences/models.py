import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from simple_history.models import HistoricalRecords


def hash_write_key(key: str) -> str:
    # Write keys are 256-bit random tokens, so a plain SHA-256 is enough (no salt, no stretching)
    # and it keeps the lookup an indexed equality.
    return hashlib.sha256(key.encode()).hexdigest()


# What a write key may do. `track` (track, identify, page, screen) is what a browser or app key
# needs and all it gets by default, since such a key is public; erasing people and reporting
# outcomes are server-side jobs with a key of their own.
TRACK, ERASE, OUTCOMES = "track", "erase", "outcomes"
SCOPES = (TRACK, ERASE, OUTCOMES)
SCOPE_CHOICES = [
    (TRACK, "track: track, identify, page, screen (safe in a browser)"),
    (ERASE, "erase: DELETE /track/api/v1/customers/<id> (server only)"),
    (OUTCOMES, "outcomes: POST /ingest/v1/outcomes (server only)"),
]


def default_source_scopes() -> list[str]:
    return [TRACK]


def scopes_problem(scopes) -> str | None:
    if not isinstance(scopes, (list, tuple)) or not scopes:
        return f"give at least one scope of {', '.join(SCOPES)}"
    for scope in scopes:
        if scope not in SCOPES:
            return f"{scope!r} is not a scope; use {', '.join(SCOPES)}"
    return None


class SourceQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class Source(models.Model):
    """Where people and events come from. `name` doubles as the Track API site id."""

    name = models.SlugField(max_length=64, unique=True)
    write_key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_hint = models.CharField(max_length=8, editable=False, help_text="Last characters of the key, to tell keys apart.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    scopes = models.JSONField(
        default=default_source_scopes,
        help_text="What the key may do: track (browser-safe), erase, outcomes (server keys).",
    )

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

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])

    def clean(self):
        from django.core.exceptions import ValidationError

        if problem := scopes_problem(self.scopes):
            raise ValidationError({"scopes": problem})
        self.scopes = [s for s in SCOPES if s in self.scopes]


class Person(models.Model):
    """One customer profile, keyed by the Customer.io customer id."""

    customer_id = models.CharField(max_length=150, unique=True)
    email = models.CharField(max_length=254, blank=True, default="")
    phone = models.CharField(max_length=64, blank=True, default="", db_index=True)
    # the phone in E.164 when it reads as a valid number (local numbers in PHONE_DEFAULT_REGION),
    # so that a person is found by phone however either side wrote it
    phone_e164 = models.CharField(max_length=20, blank=True, default="", db_index=True, editable=False)
    cio_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    attributes = models.JSONField(default=dict, blank=True)
    is_test = models.BooleanField(default=False, help_text="Internal test account: receives 'Send test cohort' syncs.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "people"
        indexes = [
            models.Index(Lower("email"), name="person_email_lower"),
            # the handful of internal test accounts, which the lift leaves out
            models.Index(fields=["id"], condition=models.Q(is_test=True), name="person_test_accounts"),
        ]

    def __str__(self):
        return self.customer_id


class Event(models.Model):
    # No index of their own: (person, name, occurred_at) and (source, message_id) lead with them,
    # and every index is one more write per event ingested.
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="events", db_index=False)
    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="events", db_index=False)
    name = models.CharField(max_length=255)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    properties = models.JSONField(default=dict, blank=True)
    message_id = models.CharField(max_length=255)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "message_id"], name="event_message_id_unique")]
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

    # no index of its own: (person, name) leads with it
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="event_stats", db_index=False)
    name = models.CharField(max_length=255)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["person", "name"], name="eventstat_person_name_unique")]
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


# --- audiences ------------------------------------------------------------------------------


class NamingConvention(models.Model):
    """A template of tokens, e.g. `{channel}_{intent}_{window}_{exclusions}`, with the values
    or pattern each token allows. Audience names must parse under the default convention."""

    key = models.SlugField(max_length=64, unique=True)
    template = models.CharField(max_length=200)
    tokens = models.JSONField(
        default=dict,
        help_text='Per token: {"values": [...]} or {"pattern": "regex"}, optionally "description".',
    )
    example = models.CharField(max_length=200, blank=True, default="")
    is_default = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["key"]

    def __str__(self):
        return f"{self.key}: {self.template}"

    def parse(self, name: str) -> dict:
        from .naming import parse_name

        return parse_name(self, name)


class IdentifierPolicy(models.Model):
    """Which identifier a destination joins on, and how it is normalised."""

    CUSTOMER_ID, EMAIL, PHONE, CIO_ID, ATTRIBUTE = "customer_id", "email", "phone", "cio_id", "attribute"
    FIELD_CHOICES = [
        (CUSTOMER_ID, "Customer id"),
        (EMAIL, "Email (trimmed, lower-cased)"),
        (PHONE, "Phone (E.164)"),
        (CIO_ID, "Customer.io cio_id"),
        (ATTRIBUTE, "A named attribute"),
    ]

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    field = models.CharField(max_length=20, choices=FIELD_CHOICES)
    attribute = models.CharField(max_length=64, blank=True, default="", help_text="When the field is an attribute.")
    default_region = models.CharField(
        max_length=2, default="US", help_text="Region for phone numbers written without a country code."
    )
    hash_sha256 = models.BooleanField(default=False, help_text="Send the SHA-256 of the normalised value.")
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["key"]
        verbose_name_plural = "identifier policies"

    def __str__(self):
        return self.name

    def identifier_for(self, person) -> str | None:
        from .identifiers import identifier_for

        return identifier_for(self, person)


class PriorityGroup(models.Model):
    """Ordered audiences: a person lands only in the highest-ranked one they qualify for."""

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, default="")

    history = HistoricalRecords()

    class Meta:
        ordering = ["key"]

    def __str__(self):
        return self.name


class Audience(models.Model):
    ACTIVATION, SUPPRESSION = "activation", "suppression"
    PURPOSE_CHOICES = [(ACTIVATION, "Activation"), (SUPPRESSION, "Suppression")]
    RULES, CUSTOMERIO_SEGMENT = "rules", "customerio_segment"
    SOURCE_CHOICES = [(RULES, "Rules"), (CUSTOMERIO_SEGMENT, "Customer.io segment")]
    REALTIME = "realtime"

    key = models.SlugField(max_length=64, unique=True, help_text="Stable identifier; never changes.")
    name = models.CharField(max_length=200, unique=True)
    name_tokens = models.JSONField(default=dict, blank=True, editable=False)
    description = models.TextField(blank=True, default="")
    purpose = models.CharField(max_length=20, choices=PURPOSE_CHOICES, default=ACTIVATION)
    source_kind = models.CharField(max_length=30, choices=SOURCE_CHOICES, default=RULES)
    rule = models.JSONField(default=dict, blank=True)
    source_settings = models.JSONField(default=dict, blank=True)
    exclusions = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="excluded_from",
        help_text="Suppression audiences whose members are taken out of this one.",
    )
    priority_group = models.ForeignKey(PriorityGroup, null=True, blank=True, on_delete=models.SET_NULL, related_name="audiences")
    priority_rank = models.PositiveIntegerField(null=True, blank=True, help_text="1 is the highest.")
    cadence = models.CharField(
        max_length=100, default=REALTIME, help_text="realtime, an interval such as 15m, or a cron expression."
    )
    identifier_policy = models.ForeignKey(
        IdentifierPolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="audiences"
    )
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audiences"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    # Kept by evaluation, so pages never count a million membership rows.
    current_size = models.PositiveIntegerField(default=0, editable=False)
    last_evaluated_at = models.DateTimeField(null=True, blank=True, editable=False)
    next_evaluation_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Share of current members with a valid identifier under the audience's policy (sampled),
    # refreshed hourly by the alert check.
    identifier_coverage = models.FloatField(null=True, blank=True, editable=False)
    coverage_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when an evaluation fails (the audience is skipped, the others go on) and cleared by its
    # next successful full evaluation; the alert check opens "evaluation failing" from them.
    evaluation_error = models.TextField(blank=True, default="", editable=False)
    evaluation_failed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Window expiry: a digest of what the last full evaluation read besides the person store (the
    # rule, exclusions, higher-ranked audiences), so that a full evaluation of a realtime audience
    # under the same definition is a consistency check; the people it had to correct are a bug,
    # counted here (and logged, and alerted by the sync side's check).
    evaluated_definition = models.CharField(max_length=64, blank=True, default="", editable=False)
    consistency_differences = models.PositiveIntegerField(default=0, editable=False)
    consistency_checked_at = models.DateTimeField(null=True, blank=True, editable=False)

    history = HistoricalRecords(
        m2m_fields=[exclusions],
        excluded_fields=[
            "current_size",
            "last_evaluated_at",
            "next_evaluation_at",
            "identifier_coverage",
            "coverage_checked_at",
            "evaluation_error",
            "evaluation_failed_at",
            "evaluated_definition",
            "consistency_differences",
            "consistency_checked_at",
        ],
    )

    class Meta:
        ordering = ["key"]
        constraints = [
            models.UniqueConstraint(
                fields=["priority_group", "priority_rank"],
                name="audience_rank_unique_in_group",
                condition=models.Q(priority_group__isnull=False),
            )
        ]

    def __str__(self):
        return self.name

    @property
    def is_realtime(self) -> bool:
        return self.cadence == self.REALTIME

    @property
    def is_failing(self) -> bool:
        return self.evaluation_failed_at is not None


class MembershipQuerySet(models.QuerySet):
    def current(self):
        """The memberships still open: the people in their audience now."""
        return self.filter(exited_at__isnull=True)


class Membership(models.Model):
    """A person in an audience from `entered_at` until `exited_at`; re-entry is a new row."""

    # No index of their own: the indexes below lead with them. Every exit writes a new entry in
    # each index (`exited_at` is in the open-membership one), so each index is paid per change:
    # none on exit times, which no query looks up (the current members are the open-membership
    # index's; dropping it took a 10,000-person tick's writes from 438 to 397 ms).
    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="memberships", db_index=False)
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="memberships", db_index=False)
    entered_at = models.DateTimeField()
    exited_at = models.DateTimeField(null=True, blank=True)
    # Set by the sync side when the entry is written, for the lift: None when no sync of the
    # audience held anyone out then; True when this entry was held out of every sync (sent
    # nowhere), False when it went to at least one.
    held_out = models.BooleanField(null=True, blank=True, editable=False)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            # also the index of the current members (an audience's, a person's in one audience)
            models.UniqueConstraint(
                fields=["audience", "person"],
                condition=models.Q(exited_at__isnull=True),
                name="membership_one_open_per_person",
            )
        ]
        indexes = [
            models.Index(fields=["person", "entered_at"], name="membership_person_time"),
            models.Index(fields=["audience", "entered_at"], name="membership_audience_entered"),
            # the lift: an audience's entries of a period that were part of a holdout, and each
            # person's first one among them
            models.Index(
                fields=["audience", "person", "entered_at", "held_out"],
                condition=models.Q(held_out__isnull=False),
                name="membership_holdout_entries",
            ),
        ]

    def __str__(self):
        return f"{self.person_id} in {self.audience_id} from {self.entered_at:%Y-%m-%d %H:%M}"


class SizeSample(models.Model):
    """An evaluation's outcome. Unchanged evaluations within the hour extend the last sample
    (`last_at`, `evaluations`) instead of adding rows, so a realtime audience evaluated every
    minute stores at most a couple of dozen rows a day while it is stable."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="size_samples")
    at = models.DateTimeField()
    last_at = models.DateTimeField()
    size = models.PositiveIntegerField()
    entered = models.PositiveIntegerField(default=0)
    exited = models.PositiveIntegerField(default=0)
    evaluations = models.PositiveIntegerField(default=1)
    full = models.BooleanField(default=True)
    duration_ms = models.FloatField(default=0)

    class Meta:
        indexes = [models.Index(fields=["audience", "at"], name="sizesample_audience_at")]
        ordering = ["audience", "at"]

    def __str__(self):
        return f"{self.audience_id} = {self.size} at {self.at:%Y-%m-%d %H:%M}"


class PendingEvaluation(models.Model):
    """People whose events or attributes changed and whom realtime audiences have not looked at
    yet. Written in the ingest transaction; claimed and evaluated in one transaction by the
    worker, so a crash in between loses nothing and a burst of ingest coalesces into one pass."""

    person = models.OneToOneField(Person, on_delete=models.CASCADE, primary_key=True, related_name="+")
    queued_at = models.DateTimeField()

    def __str__(self):
        return f"{self.person_id} since {self.queued_at:%H:%M:%S}"


class WindowExpiry(models.Model):
    """When a realtime audience's answer for a person next changes with no new event (a window
    ends or opens, a date attribute crosses its age) and what it becomes (audiences/expiry.py).
    The realtime tick applies the changes whose time has come, found by `due_at`, instead of
    evaluating everyone; a row without `becomes` asks it to evaluate the person.

    Its keys have no constraint in the database (Django still deletes a person's or an
    audience's rows with them): the rows are written by the thousand in every tick, and checking
    each one's keys at commit took 120 of the 214 ms a tick for 10,000 people spent committing;
    a row left by a person erased meanwhile enters nobody when its time comes, and goes."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False)
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    due_at = models.DateTimeField()
    # whether the person is in the audience from `due_at` on; None: evaluate them then
    becomes = models.BooleanField(null=True, blank=True)
    # the changes after that one, [[ISO instant, in or not], ...], None when there are none
    later = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["audience", "person"], name="windowexpiry_audience_person")]
        indexes = [models.Index(fields=["due_at"], name="windowexpiry_due")]

    def __str__(self):
        return f"{self.person_id} in {self.audience_id} due {self.due_at:%Y-%m-%d %H:%M:%S}"
