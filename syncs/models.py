from django.conf import settings
from django.db import models
from django.utils import timezone
from simple_history.models import HistoricalRecords

from audiences.models import Audience, IdentifierPolicy, Person

from .crypto import decrypt, encrypt


class EncryptedCredentials(models.Model):
    """Credentials encrypted at rest (Fernet, key from DOWNSTREAM_ENCRYPTION_KEY). The value
    is never shown again after save; config files hold `env:NAME` references, kept beside it."""

    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    credential_refs = models.JSONField(default=dict, blank=True, editable=False)
    credentials_changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        abstract = True

    @property
    def credentials(self) -> dict:
        return decrypt(self.credentials_encrypted) if self.credentials_encrypted else {}

    def set_credentials(self, values: dict, refs: dict | None = None) -> None:
        self.credentials_encrypted = encrypt(values) if values else ""
        self.credential_refs = dict(refs or {})
        self.credentials_changed_at = timezone.now()

    def credential_names(self) -> list[str]:
        return sorted(self.credentials)


def destination_kinds():
    """The kinds of the destination registry: a callable, so a new kind needs no migration."""
    from .destinations.registry import kind_choices

    return kind_choices()


class Destination(EncryptedCredentials):
    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=20, choices=destination_kinds)
    settings = models.JSONField(default=dict, blank=True, help_text="Non-secret settings: base URL, client id, headers, format.")
    batch_size = models.PositiveIntegerField(default=500)
    rate_limit_per_s = models.FloatField(default=10.0, help_text="Requests per second at most.")
    timeout_s = models.FloatField(default=10.0, help_text="Seconds before a request is given up and retried.")
    max_attempts = models.PositiveIntegerField(default=8)
    retry_base_s = models.FloatField(default=2.0, help_text="First retry delay; doubles each attempt, with jitter.")
    retry_cap_s = models.FloatField(default=300.0)
    concurrency = models.PositiveSmallIntegerField(
        default=4, help_text="Requests in flight at once (within the rate limit); one is kept for suppressions and removals."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    # One sender process at a time per destination (a lease taken by conditional UPDATE and
    # renewed by a heartbeat), so that the rate limit holds across workers; within it, several
    # requests may be in flight.
    lease_owner = models.CharField(max_length=64, blank=True, default="", editable=False)
    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    # The destination asked us (Retry-After) not to call before this time.
    not_before = models.DateTimeField(null=True, blank=True, editable=False)

    history = HistoricalRecords(excluded_fields=["credentials_encrypted", "lease_owner", "lease_until", "not_before"])

    class Meta:
        ordering = ["key"]

    def __str__(self):
        return self.name


class CustomerIoWorkspace(EncryptedCredentials):
    """Where `customerio_segment` audiences are pulled from (App API key, US or EU)."""

    REGIONS = [("us", "US"), ("eu", "EU")]

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    region = models.CharField(max_length=2, choices=REGIONS, default="us")
    base_url = models.URLField(blank=True, default="", help_text="Overrides the region's host (tests, proxies).")
    rate_limit_per_s = models.FloatField(default=10.0)
    timeout_s = models.FloatField(default=30.0)

    history = HistoricalRecords(excluded_fields=["credentials_encrypted"])

    class Meta:
        ordering = ["key"]

    def __str__(self):
        return self.name


class SegmentMember(models.Model):
    """The last pulled member list of a `customerio_segment` audience; evaluation diffs it
    against current membership exactly as it diffs a rule's result.

    No foreign-key constraints in the database: a first pull writes a million rows, and
    checking each against its two parents cost more than the whole paging. Django's delete
    still removes the rows of an erased person or a deleted audience (on_delete=CASCADE), and
    the unique index (audience, person) serves look-ups by audience."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False)
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="+", db_constraint=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["audience", "person"], name="segmentmember_unique")]


# A purchaser must leave paid audiences within seconds: a suppression sync gives up on a request
# after this long (and tries again) unless it sets its own deadline.
SUPPRESSION_TIMEOUT_S = 3.0


class Sync(models.Model):
    MEMBERSHIP, EVENTS = "membership", "events"
    MODE_CHOICES = [(MEMBERSHIP, "Membership (add / remove)"), (EVENTS, "Events (entered / exited)")]

    key = models.SlugField(max_length=64, unique=True)
    audience = models.ForeignKey(Audience, on_delete=models.PROTECT, related_name="syncs")
    destination = models.ForeignKey(Destination, on_delete=models.PROTECT, related_name="syncs")
    mode = models.CharField(max_length=20, choices=MODE_CHOICES, default=MEMBERSHIP)
    fields = models.JSONField(
        default=list,
        blank=True,
        help_text="Allow-list of person attributes sent beside the identifier, audience name and entry time.",
    )
    identifier_policy = models.ForeignKey(
        IdentifierPolicy,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="syncs",
        help_text="Defaults to the audience's policy, then to the customer id.",
    )
    downstream_audience_id = models.CharField(
        max_length=120, blank=True, default="", help_text="The audience id downstream; defaults to the audience key."
    )
    match_on = models.JSONField(
        default=list,
        blank=True,
        help_text="For an ad platform: which of its identifiers to send (blank: every one it takes).",
    )
    additive_only = models.BooleanField(
        default=False, help_text="Only add people downstream; never send a removal (a lookalike seed, say)."
    )
    holdout_share = models.FloatField(
        default=0.0,
        help_text="Share of the audience never sent, to measure lift against: 0.1 holds out 10 %. "
        "Applies to people entering from the change on.",
    )
    holdout_salt = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Mixed with the customer id to choose who is held out; blank: the sync's key. A new salt chooses other people.",
    )
    # what the platform itself says of the audience, read on a schedule where it tells
    downstream_size = models.PositiveIntegerField(null=True, blank=True, editable=False)
    downstream_match_rate = models.FloatField(null=True, blank=True, editable=False)
    downstream_read_at = models.DateTimeField(null=True, blank=True, editable=False)
    paused = models.BooleanField(default=False)
    dry_run = models.BooleanField(default=False, help_text="Record exactly what would be sent; send nothing.")
    test_cohort_only = models.BooleanField(default=False, help_text="Send only internal test accounts.")
    removal_guard_share = models.FloatField(
        default=0.30, help_text="Hold removals above this share of the audience until a person approves them."
    )
    timeout_s = models.FloatField(
        null=True,
        blank=True,
        help_text="Deadline of each request; blank: 3 s for a suppression audience, else the destination's timeout.",
    )
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    # the read-back changes on a schedule: not a setting, so not in the history
    history = HistoricalRecords(excluded_fields=["downstream_size", "downstream_match_rate", "downstream_read_at"])

    class Meta:
        ordering = ["key"]

    def __str__(self):
        return f"{self.audience} → {self.destination}"

    @property
    def downstream_id(self) -> str:
        return self.downstream_audience_id or self.audience.key

    @property
    def is_suppression(self) -> bool:
        return self.audience.purpose == Audience.SUPPRESSION

    @property
    def request_timeout_s(self) -> float:
        if self.timeout_s:
            return self.timeout_s
        if self.is_suppression:
            return min(SUPPRESSION_TIMEOUT_S, self.destination.timeout_s)
        return self.destination.timeout_s

    def identifier_summary(self) -> str:
        """Whom the destination is told about, in words: the platform's match keys where its
        kind matches on its own keys (the identifier policy plays no part there), else the policy."""
        from .destinations.registry import spec_for

        spec = spec_for(self.destination.kind)
        if spec.match_keys:
            keys = spec.keys_for(self)
            every = " (every key it takes)" if len(keys) == len(spec.match_keys) else ""
            return f"matches on {', '.join(k.label for k in keys)}{every}"
        return f"identifier: {self.policy().name}"

    def policy(self):
        """The sync's own identifier policy, else its audience's where the destination kind can
        match on it (LiveLike takes no hashes), else the customer id."""
        from audiences.identifiers import customer_id_policy

        from .destinations.registry import spec_for

        if self.identifier_policy:
            return self.identifier_policy
        audience_policy = self.audience.identifier_policy
        if audience_policy and not spec_for(self.destination.kind).identifier_problem(audience_policy):
            return audience_policy
        return customer_id_policy()


class GlobalHoldout(models.Model):
    """One holdout across every paid sync (the ad platforms: kinds whose spec says paid_media): the
    people it picks are sent to none of them, so the audience's lift measures paid media as a
    whole. One row, key `global`, created by migrate; a share of 0 holds nobody out."""

    KEY = "global"

    key = models.SlugField(max_length=64, unique=True, default=KEY, editable=False)
    share = models.FloatField(
        default=0.0,
        help_text="Share of every paid audience never sent to any ad platform: 0.05 holds out 5 %. "
        "Applies to people entering from the change on.",
    )
    salt = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Mixed with the customer id to choose who is held out; blank: 'global'. A new salt chooses other people.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name = "global paid holdout"

    def __str__(self):
        return f"global paid holdout {self.share * 100:.4g} %" if self.share else "global paid holdout (off)"


class SyncRun(models.Model):
    RUNNING, SUCCEEDED, PARTIAL, FAILED = "running", "succeeded", "partial", "failed"
    STATUS_CHOICES = [(RUNNING, "Running"), (SUCCEEDED, "Succeeded"), (PARTIAL, "Partly failed"), (FAILED, "Failed")]
    DELIVER, DRY_RUN, TEST_COHORT, PULL = "deliver", "dry_run", "test_cohort", "pull"
    KIND_CHOICES = [(DELIVER, "Delivery"), (DRY_RUN, "Dry run"), (TEST_COHORT, "Test cohort"), (PULL, "Segment pull")]

    sync = models.ForeignKey(Sync, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=20, choices=KIND_CHOICES, default=DELIVER)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES, default=RUNNING)
    planned = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    retried = models.PositiveIntegerField(default=0)
    requests = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # what the platform said of the run's requests (counts received and invalid, samples, ids)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["sync", "started_at"], name="syncrun_sync_started")]
        ordering = ["-started_at"]

    def __str__(self):
        return f"{self.sync.key} {self.kind} {self.started_at:%Y-%m-%d %H:%M:%S} {self.status}"

    @property
    def duration_s(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None


class RemovalHold(models.Model):
    """Removals held back because there were too many at once (or the source fell to zero),
    until a person approves or discards them."""

    PENDING, APPROVED, DISCARDED = "pending", "approved", "discarded"
    DECISIONS = [(PENDING, "Waiting for a decision"), (APPROVED, "Approved"), (DISCARDED, "Discarded")]

    sync = models.ForeignKey(Sync, on_delete=models.CASCADE, related_name="holds")
    reason = models.CharField(max_length=200)
    removals = models.PositiveIntegerField()
    audience_size_before = models.PositiveIntegerField()
    opened_at = models.DateTimeField(default=timezone.now)
    decision = models.CharField(max_length=20, choices=DECISIONS, default=PENDING)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]

    def __str__(self):
        return f"{self.removals:,} removals held on {self.sync.key}: {self.reason}"


class DeliveryQuerySet(models.QuerySet):
    def pending(self):
        """Waiting for the sender: not claimed, not held, not done."""
        return self.filter(state=Delivery.PENDING)


class Delivery(models.Model):
    """The outbox: one membership change waiting for, or done with, one sync."""

    ENTER, EXIT = "enter", "exit"
    ACTION_CHOICES = [(ENTER, "Enter"), (EXIT, "Exit")]
    PENDING, SENDING, SENT, REJECTED, DEAD, CANCELLED, HELD, SKIPPED, DRY_RUN = (
        "pending",
        "sending",
        "sent",
        "rejected",
        "dead",
        "cancelled",
        "held",
        "skipped",
        "dry_run",
    )
    STATE_CHOICES = [
        (PENDING, "Pending"),
        (SENDING, "Sending"),
        (SENT, "Sent"),
        (REJECTED, "Rejected by destination"),
        (DEAD, "Dead letter"),
        (CANCELLED, "Cancelled (entry and exit never sent)"),
        (HELD, "Held"),
        (SKIPPED, "Skipped"),
        (DRY_RUN, "Dry run (not sent)"),
    ]
    OPEN_STATES = (PENDING, SENDING, HELD)

    sync = models.ForeignKey(Sync, on_delete=models.CASCADE, related_name="deliveries")
    person = models.ForeignKey(Person, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries")
    customer_id = models.CharField(max_length=150, help_text="Kept when the person is erased.")
    action = models.CharField(max_length=5, choices=ACTION_CHOICES)
    triggered_at = models.DateTimeField(help_text="When the change that caused this reached Downstream.")
    changed_at = models.DateTimeField(help_text="When the person entered or left the audience.")
    initial = models.BooleanField(
        default=False, help_text="Queued when the sync was created, for people already in the audience (not a change: no lag)."
    )
    created_at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=10, choices=STATE_CHOICES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")
    response_status = models.PositiveIntegerField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    # A failed attempt that may still have reached the destination (no answer in time, or the
    # connection dropped after the request went out): its exit must be sent, whatever came of it.
    may_have_arrived = models.BooleanField(default=False, db_default=False)
    batch_id = models.UUIDField(null=True, blank=True)
    run = models.ForeignKey(SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries")
    hold = models.ForeignKey(RemovalHold, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries")
    # What was (or, for erasures, will be) sent: identifier and mapped fields.
    payload = models.JSONField(null=True, blank=True)
    # The holdout's decision for an entry, for the lift: None when the sync held nobody out then;
    # True for a held-out person (the row is skipped, with the holdout as its reason), False for
    # one it sends. A held-out person's exit is skipped and marked True too.
    held_out = models.BooleanField(null=True, blank=True, editable=False)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        indexes = [
            # what the sender claims next, in order; sent rows drop out of the index
            models.Index(fields=["sync", "id"], condition=models.Q(state="pending"), name="delivery_pending"),
            # removals are claimed before additions: the exits of a sync in order
            models.Index(fields=["sync", "action", "id"], condition=models.Q(state="pending"), name="delivery_pending_action"),
            # a person's changes leave in order: the claim looks for an earlier open one
            models.Index(fields=["sync", "customer_id", "id"], name="delivery_person_order"),
            models.Index(fields=["person", "created_at"], name="delivery_person_time"),
            models.Index(fields=["sync", "acknowledged_at"], name="delivery_sync_acked"),
            models.Index(fields=["batch_id"], name="delivery_batch"),
            # the lift of a sync: its entries of a period that were part of a holdout, and each
            # person's first one among them
            models.Index(
                fields=["sync", "person", "changed_at", "held_out"],
                condition=models.Q(action="enter", initial=False, held_out__isnull=False),
                name="delivery_holdout_entries",
            ),
        ]
        verbose_name_plural = "deliveries"

    def __str__(self):
        return f"{self.action} {self.customer_id} → {self.sync_id} ({self.state})"

    @property
    def lag_s(self) -> float | None:
        if self.acknowledged_at:
            return (self.acknowledged_at - self.triggered_at).total_seconds()
        return None


class DeliveryBatch(models.Model):
    """One attempt at one request to a destination: what was sent, how long it took, what came
    back. A batch that failed is retried as the same batch (same batch id, next attempt), so
    receivers can recognise a repeat."""

    batch_id = models.UUIDField(db_index=True)
    sync = models.ForeignKey(Sync, on_delete=models.CASCADE, related_name="batches")
    run = models.ForeignKey(SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="batches")
    attempt = models.PositiveIntegerField(default=1)
    sent_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.FloatField(default=0)
    status = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    rows = models.JSONField(default=list, help_text="[{delivery, action, identifier, fields}] as sent.")

    class Meta:
        indexes = [models.Index(fields=["sync", "sent_at"], name="deliverybatch_sync_sent")]
        ordering = ["-sent_at"]

    def __str__(self):
        return f"batch {self.id} ({len(self.rows)} rows, {self.status or self.error[:40]})"


class AlertQuerySet(models.QuerySet):
    def open(self):
        """Not resolved yet (acknowledged or not)."""
        return self.filter(resolved_at__isnull=True)


class Alert(models.Model):
    """An open condition someone should look at. Opened and resolved by the system (one open
    alert per `key`), acknowledged by a person; notified once on opening and once on resolving."""

    ZERO_COUNT, SUDDEN_DROP, FAILING_SYNC, LAG_OVER_TARGET, LOW_COVERAGE, STALE_SYNC, MASS_REMOVAL = (
        "zero_count",
        "sudden_drop",
        "failing_sync",
        "lag_over_target",
        "low_coverage",
        "stale_sync",
        "mass_removal",
    )
    FAILING_EVALUATION = "failing_evaluation"
    LOW_MATCH_RATE, DOWNSTREAM_DRIFT, UNDER_MINIMUM = "low_match_rate", "downstream_drift", "under_minimum"
    KIND_CHOICES = [
        (ZERO_COUNT, "Audience at zero"),
        (SUDDEN_DROP, "Sudden drop"),
        (FAILING_SYNC, "Failing sync"),
        (LAG_OVER_TARGET, "Suppression lag over target"),
        (LOW_COVERAGE, "Low identifier coverage"),
        (STALE_SYNC, "Stale sync"),
        (MASS_REMOVAL, "Mass removal held"),
        (FAILING_EVALUATION, "Evaluation failing"),
        (LOW_MATCH_RATE, "Low match rate downstream"),
        (DOWNSTREAM_DRIFT, "Downstream count drifted"),
        (UNDER_MINIMUM, "Removals held at the platform's minimum"),
    ]

    key = models.CharField(max_length=200, help_text="One open alert per key, e.g. zero_count:audience:12.")
    kind = models.CharField(max_length=30, choices=KIND_CHOICES)
    audience = models.ForeignKey(Audience, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    sync = models.ForeignKey(Sync, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    message = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    notified_open_at = models.DateTimeField(null=True, blank=True)
    notified_resolved_at = models.DateTimeField(null=True, blank=True)
    notified_channels = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text='Channels each notification went out on, e.g. {"open": ["email"]}: a retry sends only the others.',
    )

    objects = AlertQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key"], condition=models.Q(resolved_at__isnull=True), name="alert_one_open_per_key")
        ]
        indexes = [models.Index(fields=["resolved_at", "opened_at"], name="alert_open_time")]
        ordering = ["-opened_at"]

    def __str__(self):
        return self.message

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class SourcePull(models.Model):
    """One pull of a Customer.io segment's members."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="pulls")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    members = models.PositiveIntegerField(default=0)
    people_created = models.PositiveIntegerField(default=0)
    unmapped = models.PositiveIntegerField(default=0, help_text="Members with neither a known id, email nor cio_id.")
    requests = models.PositiveIntegerField(default=0)
    throttled = models.PositiveIntegerField(default=0)
    attributes_fetched = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        return f"pull of {self.audience.key} at {self.started_at:%Y-%m-%d %H:%M}: {self.members:,} members"


class Outcome(models.Model):
    """What downstream reports back per audience per day (POST /ingest/v1/outcomes)."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="outcomes")
    date = models.DateField()
    source = models.ForeignKey("audiences.Source", on_delete=models.CASCADE, related_name="outcomes")
    impressions = models.PositiveBigIntegerField(default=0)
    reach = models.PositiveBigIntegerField(null=True, blank=True)
    clicks = models.PositiveBigIntegerField(default=0)
    conversions = models.PositiveBigIntegerField(default=0)
    revenue = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    spend = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, default="USD")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["audience", "date", "source"], name="outcome_one_per_day_and_source")]
        ordering = ["-date"]

    def __str__(self):
        return f"{self.audience.key} {self.date}: {self.conversions} conversions for {self.spend} {self.currency}"


class Baseline(models.Model):
    """Pre-launch figures the team captured for an audience, to compare outcomes against."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="baselines")
    captured_on = models.DateField(default=timezone.localdate)
    cpa = models.DecimalField("CPA", max_digits=10, decimal_places=2, null=True, blank=True)
    roas = models.DecimalField("ROAS", max_digits=8, decimal_places=2, null=True, blank=True)
    frequency = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    conversion_rate = models.DecimalField(max_digits=6, decimal_places=4, null=True, blank=True, help_text="0.025 for 2.5 %")
    suppression_lag_s = models.FloatField(null=True, blank=True)
    notes = models.TextField(blank=True, default="")
    entered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    history = HistoricalRecords()

    class Meta:
        ordering = ["-captured_on"]

    def __str__(self):
        return f"baseline of {self.audience.key} on {self.captured_on}"


class SyncDay(models.Model):
    """What retention pruned of one sync's day, counted, so that the run history and the weekly
    review read the same figures after the rows are gone: a page adds these to the rows still
    there (each row is counted in exactly one place). Deliveries count on the day they were
    created, their lag on the day they were acknowledged, runs on the day they started,
    batches on the day they were sent (days in TIME_ZONE, as the pages' weeks)."""

    sync = models.ForeignKey(Sync, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    sent = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    dead = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    dry_run = models.PositiveIntegerField(default=0)
    # lag of the changes sent (not those queued when the sync was created), per action:
    # {milliseconds, rounded up to the millisecond under 1 s and to 3 significant digits above: count}
    lag_enter = models.JSONField(default=dict)
    lag_exit = models.JSONField(default=dict)
    runs = models.PositiveIntegerField(default=0)
    runs_succeeded = models.PositiveIntegerField(default=0)
    runs_partial = models.PositiveIntegerField(default=0)
    runs_failed = models.PositiveIntegerField(default=0)
    run_planned = models.PositiveBigIntegerField(default=0)
    run_sent = models.PositiveBigIntegerField(default=0)
    run_rejected = models.PositiveBigIntegerField(default=0)
    run_skipped = models.PositiveBigIntegerField(default=0)
    run_retried = models.PositiveBigIntegerField(default=0)
    run_requests = models.PositiveBigIntegerField(default=0)
    batches = models.PositiveIntegerField(default=0)
    batches_failed = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["sync", "day"], name="syncday_one_per_day")]
        ordering = ["sync", "day"]

    def __str__(self):
        return f"{self.sync_id} on {self.day}: {self.sent:,} sent, {self.runs:,} runs (pruned)"


class RetentionRun(models.Model):
    """One pass of the retention task: what it deleted, and whether it got through everything
    due or stopped at its time budget (the next pass goes on from there)."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    event_days = models.PositiveIntegerField(help_text="Events older than this many days were due to go.")
    deleted = models.JSONField(default=dict, help_text="Rows deleted per kind: events, deliveries, batches, runs, task results.")
    complete = models.BooleanField(default=False, help_text="Everything due went; false: the time budget ran out first.")

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        return f"retention at {self.started_at:%Y-%m-%d %H:%M}: {sum(self.deleted.values()):,} rows"
