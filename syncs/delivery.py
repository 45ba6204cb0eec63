"""The delivery worker: claims outbox rows, sends them in batches, records the answers.

One sender process per destination at a time: a short lease taken by conditional UPDATE and
renewed by a heartbeat, so a dead worker's lease is taken over within seconds (at once, on
the same machine, when its process is gone) and the destination's rate limit holds however
many workers run. Within that process the sender keeps several requests in flight:

- **Two lanes.** Suppression syncs and every removal (an exit) form the urgent lane; entries
  of activation syncs the other. Urgent batches are claimed first, one request slot is kept
  for them alone, and they go first through the destination's gate, so a slow or failing
  activation batch never holds a suppression up.
- **Person order.** A row is only claimed when no earlier row of its person in its sync is
  still open, so however many requests are in flight, a person's changes leave in order and
  no exit overtakes its entry.
- **One gate per destination** (`DestinationGate`): the rate limit, a Retry-After that holds
  every sync, and no new request while another one that has not yet had time to answer is
  out (so a 429 is heard before the next request goes).
- **Bounded waits.** Each request has its sync's deadline (a suppression sync's is short); an
  urgent membership request that has not answered in time is sent again on another
  connection (hedged: membership adds and removes are idempotent) and the first answer wins;
  events are never sent twice at once. Retries back off exponentially with jitter and a cap.

All database work happens on the calling thread (the dispatcher); the pool threads only do
HTTP. A sender that dies leaves its rows 'sending'; the next one puts them back in the queue
(at-least-once: the destination may see them twice; they keep their batch id).
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import statistics
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q
from django.utils import timezone

from .destinations import OutRow, TransportError, transport_for
from .http import paced
from .models import Delivery, DeliveryBatch, Destination, RemovalHold, Sync, SyncRun
from .payload import no_identifier_reason, payload_for
from .removals import ADDITIVE_ONLY, keep_minimum

log = logging.getLogger(__name__)

# PostgreSQL plans the claim on its row estimates. A long drain moves rows out of pending far
# from what the last ANALYZE saw, and with autovacuum late or off the planner then prefers walking
# the primary key through every row already sent (a million-row backlog fell from 10 to 3
# requests/s) over the partial index of pending rows. The sender refreshes them this often.
ANALYZE_EVERY_ROWS = 100_000

# A sender waits this long in-process for a retry or a Retry-After before giving up its lease
# (the once-a-minute tick and new changes wake a sender again).
WAIT_HORIZON_S = 10.0
# The lease is renewed every HEARTBEAT_S; one not renewed for LEASE_SECONDS belongs to nobody.
LEASE_SECONDS = 5.0
HEARTBEAT_S = 1.0
# How often an idle dispatcher looks for new rows while it holds the lease.
POLL_S = 0.05
# Urgent rows retry sooner: a purchaser's removal is worth a request.
URGENT_RETRY_BASE_S = 0.2
# An urgent membership request not answered after max(HEDGE_AFTER_S, 4 × the usual answer
# time) is sent again on another connection.
HEDGE_AFTER_S = 0.25
# A lane claims another batch while those of its batches waiting at the gate take less than
# this to be let through (enough for the next one to be prepared in time).
CLAIM_AHEAD_S = 0.5
URGENT, ADDS = "urgent", "adds"


@dataclass
class Summary:
    destination_id: int
    leased: bool = True
    batches: int = 0
    sent: int = 0
    rejected: int = 0
    skipped: int = 0
    retried: int = 0
    dead: int = 0
    cancelled: int = 0
    hedged: int = 0
    runs: dict = field(default_factory=dict)


# --- lease ----------------------------------------------------------------------------------


def lease_token() -> str:
    """host:pid:random. A lease whose holder was on this machine and whose process is gone can
    be taken at once; others are waited out."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def holder_is_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # this very process: a thread of ours, or a test posing as another sender
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # a SIGKILLed worker is a zombie until init reaps it, which can take seconds: it is gone
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def acquire_lease(destination_id: int, token: str) -> bool:
    now = timezone.now()
    until = now + timedelta(seconds=LEASE_SECONDS)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=token)
    if Destination.objects.filter(free, pk=destination_id).update(lease_owner=token, lease_until=until):
        return True
    owner = Destination.objects.filter(pk=destination_id).values_list("lease_owner", flat=True).first()
    if owner and holder_is_gone(owner):
        return bool(Destination.objects.filter(pk=destination_id, lease_owner=owner).update(lease_owner=token, lease_until=until))
    return False


def lease_is_live(destination_id: int) -> bool:
    """Someone holds the lease and renewed it within the last two heartbeats."""
    row = Destination.objects.filter(pk=destination_id).values("lease_owner", "lease_until").first()
    if not row or not row["lease_until"] or holder_is_gone(row["lease_owner"]):
        return False
    return row["lease_until"] - timezone.now() > timedelta(seconds=LEASE_SECONDS - 2 * HEARTBEAT_S)


def lease_expires_in(destination_id: int) -> float:
    until = Destination.objects.filter(pk=destination_id).values_list("lease_until", flat=True).first()
    return max(0.0, (until - timezone.now()).total_seconds()) if until else 0.0


def renew_lease(destination: Destination, token: str) -> bool:
    until = timezone.now() + timedelta(seconds=LEASE_SECONDS)
    return bool(Destination.objects.filter(pk=destination.pk, lease_owner=token).update(lease_until=until))


def release_lease(destination_id: int, token: str) -> None:
    Destination.objects.filter(pk=destination_id, lease_owner=token).update(lease_owner="", lease_until=None)


# --- claiming -------------------------------------------------------------------------------


def recover_orphans(destination: Destination) -> int:
    """Rows left 'sending' by a sender that died. Only the lease holder calls this, so no live
    sender can own them. They go back as they were, batch id included; the attempt may have
    reached the destination."""
    return Delivery.objects.filter(sync__destination=destination, state=Delivery.SENDING).update(
        state=Delivery.PENDING,
        next_attempt_at=timezone.now(),
        may_have_arrived=True,
        last_error="the sender stopped before an answer came",
    )


def cancel_unsent_pairs(sync: Sync) -> int:
    """An entry and an exit of the same person that never reached the destination cancel out:
    of a run of such changes (never attempted, or attempted only in ways that cannot have
    arrived: a 429, a 5xx, a refused connection), only the last one matters, and only if it
    differs from where the run began (the opposite of its first change). Runs are not always
    alternating (a test-cohort entry repeats an unsent entry), and a held row splits a run: its
    decision is still to come. Rows out on a request right now are not pending, so never here."""
    pending = sync.deliveries.pending().filter(may_have_arrived=False)
    repeated = pending.values("customer_id").annotate(n=Count("pk")).filter(n__gt=1).values("customer_id")
    rows = (
        Delivery.objects.filter(sync=sync, customer_id__in=repeated, state__in=(Delivery.PENDING, Delivery.HELD))
        .order_by("customer_id", "id")
        .values_list("customer_id", "id", "action", "state", "may_have_arrived")
    )
    runs: list[list[tuple[int, str]]] = [[]]
    person = None
    for customer_id, delivery_id, action, state, may_have_arrived in rows:
        unsent = state == Delivery.PENDING and not may_have_arrived
        if customer_id != person or not unsent:
            runs.append([])
            person = customer_id
        if unsent:
            runs[-1].append((delivery_id, action))
    cancel = []
    for run in runs:
        if len(run) > 1:
            ids = [delivery_id for delivery_id, _ in run]
            cancel += ids if run[0][1] != run[-1][1] else ids[:-1]
    if cancel:
        Delivery.objects.pending().filter(pk__in=cancel, may_have_arrived=False).update(
            state=Delivery.CANCELLED, last_error="cancelled out by a later change that did not reach the destination either"
        )
    return len(cancel)


def first_open_before():
    """A row whose person still has an earlier open row must wait for it."""
    return Exists(
        Delivery.objects.filter(
            sync_id=OuterRef("sync_id"),
            customer_id=OuterRef("customer_id"),
            id__lt=OuterRef("id"),
            state__in=Delivery.OPEN_STATES,
        )
    )


def lane_filter(syncs, lane: str) -> Q:
    """The rows of some syncs in one lane: everything of a suppression sync and every exit are
    urgent; the entries of an activation sync are not."""
    suppression = [s.pk for s in syncs if s.is_suppression]
    activation = [s.pk for s in syncs if not s.is_suppression]
    if lane == URGENT:
        return Q(sync_id__in=suppression) | Q(sync_id__in=activation, action=Delivery.EXIT)
    return Q(sync_id__in=activation, action=Delivery.ENTER)


def claim_batch(syncs: list[Sync], limit: int, *, lane: str, retries: bool = True) -> tuple[uuid.UUID, int] | None:
    """Claim a retried batch whole (same rows, same batch id), else up to `limit` fresh rows of
    the syncs (in the order given: suppression first), in order. Returns (batch id, attempt) or
    None. `retries=False`: the caller knows no retried batch is due, and the look-up (which reads
    every pending row when there is none) is skipped. The attempt is the highest count among the
    rows claimed: rows of the batch that were skipped or cancelled meanwhile keep theirs."""
    now = timezone.now()
    due = Delivery.objects.pending().filter(lane_filter(syncs, lane), next_attempt_at__lte=now)
    retry = due.filter(batch_id__isnull=False).order_by("id").values_list("batch_id", flat=True).first() if retries else None
    if retry:
        claimed = Delivery.objects.pending().filter(batch_id=retry).update(state=Delivery.SENDING, attempts=F("attempts") + 1)
        attempt = Delivery.objects.filter(batch_id=retry, state=Delivery.SENDING).aggregate(n=Max("attempts"))["n"] or 1
        return (retry, attempt) if claimed else None
    batch_id = uuid.uuid4()
    claimed = 0
    for sync in syncs:
        if claimed >= limit:
            break
        # from the sync's first pending row on (its partial index's first entry): for ORDER BY id
        # LIMIT the row estimates suggest walking the primary key from the start, which went
        # through every row already sent, and a million of them made each claim a second
        first = Delivery.objects.pending().filter(sync=sync).order_by("id").values_list("id", flat=True).first()
        if first is None:
            continue
        candidates = (
            due.filter(sync=sync, batch_id__isnull=True, id__gte=first)
            .filter(~first_open_before())
            .order_by("id")
            .values_list("id", flat=True)[: limit - claimed]
        )
        claimed += (
            Delivery.objects.pending()
            .filter(pk__in=list(candidates))
            .update(state=Delivery.SENDING, batch_id=batch_id, attempts=F("attempts") + 1)
        )
    return (batch_id, 1) if claimed else None


def expedite_blocking_entries(syncs) -> int:
    """Removals never queue behind additions: an exit waiting for its person's entry, which
    waits for a retry, brings that retry forward (it goes in the urgent lane, with the urgent
    backoff from then on)."""
    activation = [s.pk for s in syncs if not s.is_suppression]
    if not activation:
        return 0
    blocked_exit = Delivery.objects.pending().filter(
        sync_id=OuterRef("sync_id"),
        customer_id=OuterRef("customer_id"),
        id__gt=OuterRef("id"),
        action=Delivery.EXIT,
    )
    now = timezone.now()
    batches = list(
        Delivery.objects.pending()
        .filter(sync_id__in=activation, action=Delivery.ENTER, batch_id__isnull=False, next_attempt_at__gt=now)
        .filter(Exists(blocked_exit))
        .values_list("batch_id", flat=True)
        .distinct()[:10]
    )
    if not batches:
        return 0
    return Delivery.objects.pending().filter(batch_id__in=batches).update(next_attempt_at=now)


# --- the gate -------------------------------------------------------------------------------


class DestinationGate:
    """Every request of one sender to its destination passes here, from any thread.

    - at most `per_second` requests a second;
    - a Retry-After (`hold`) stops every request, of every sync, until it has run out;
    - no request starts while another one is out that has not had time to answer yet (twice
      the quickest recent answer, at least 50 ms): a 429 on it is heard before the next one
      goes, and only a request slower than that (a hang, a large batch) has others pass it;
    - urgent callers go first: a non-urgent caller waits while an urgent one is waiting.
    """

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next_at = 0.0
        self.hold_until = 0.0
        self.urgent_waiting = 0
        self.out: dict[int, float] = {}
        self.answers = collections.deque(maxlen=50)
        self.cond = threading.Condition()
        self.tickets = 0

    def usual_answer_s(self) -> float:
        return statistics.median(self.answers) if self.answers else 0.02

    def quiet_s(self) -> float:
        """How long a request is given to answer before another may start: twice the quickest
        recent answer (a 429 comes back as fast as anything: the destination refuses before it
        works), at least 50 ms. The median would make a suppression wait behind every large
        batch of additions that is still being processed."""
        return min(1.0, max(0.05, 2 * min(self.answers))) if self.answers else 0.05

    def _turn(self, *, held_back=None, abandoned=None) -> float | None:
        """Under the lock: wait until the rate limit, any hold and `held_back(now)` (seconds
        more, for the caller's own reasons) let a request go, and take its place in the rate;
        the time it may go, or None once `abandoned()` turned true."""
        while True:
            if abandoned is not None and abandoned():
                return None
            now = time.monotonic()
            wait = max(self.next_at, self.hold_until) - now
            if held_back is not None:
                wait = max(wait, held_back(now))
            if wait <= 0:
                self.next_at = max(now, self.next_at) + self.interval
                return now
            self.cond.wait(min(wait, POLL_S))

    def enter(self, *, urgent: bool, abandoned=lambda: False) -> int | None:
        """A ticket once the request may go; None if `abandoned()` turned true meanwhile (its
        batch was answered on another connection, or its sender stopped): it must not go."""

        def held_back(now):
            wait = self.quiet_s() - (now - max(self.out.values())) if self.out else 0.0
            return max(wait, POLL_S) if not urgent and self.urgent_waiting else wait

        with self.cond:
            if urgent:
                self.urgent_waiting += 1
            try:
                now = self._turn(held_back=held_back, abandoned=abandoned)
                if now is None:
                    return None
                self.tickets += 1
                self.out[self.tickets] = now
                return self.tickets
            finally:
                if urgent:
                    self.urgent_waiting -= 1
                self.cond.notify_all()

    def pace(self) -> None:
        """A further request of a call already admitted (`syncs.http.paced`): the rate limit
        and any hold apply to it; it queues behind nobody's answer."""
        with self.cond:
            self._turn()
            self.cond.notify_all()

    def leave(self, ticket: int, *, answered: bool, retry_after: float | None = None) -> None:
        with self.cond:
            started = self.out.pop(ticket, None)
            if answered and started is not None:
                self.answers.append(time.monotonic() - started)
            if retry_after is not None:
                self.hold_until = max(self.hold_until, time.monotonic() + retry_after)
            self.cond.notify_all()

    def hold(self, seconds: float) -> None:
        with self.cond:
            self.hold_until = max(self.hold_until, time.monotonic() + seconds)
            self.cond.notify_all()

    def held_for(self) -> float:
        return max(0.0, self.hold_until - time.monotonic())


# --- sending --------------------------------------------------------------------------------


def backoff_seconds(destination: Destination, attempts: int, *, urgent: bool = False) -> float:
    """Exponential, capped, with jitter (half fixed, half random) so retries spread out."""
    base = min(destination.retry_base_s, URGENT_RETRY_BASE_S) if urgent else destination.retry_base_s
    ceiling = min(destination.retry_cap_s, base * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + random.random() * ceiling / 2


NEVER_REACHED = {
    Delivery.SKIPPED: "skipped",
    Delivery.REJECTED: "rejected by the destination",
    Delivery.DRY_RUN: "a dry run",
    Delivery.DEAD: "a dead letter that never reached it",
}


def _exits_without_entry(sync: Sync, deliveries: list[Delivery]) -> dict[int, str]:
    """Exits whose person the destination never had: the change before it in this sync
    (leaving out pairs that cancelled out) is an entry that was skipped, rejected, a dry run, or
    gave up without any attempt that may have arrived, or there is none. Removing them would
    tell the destination about someone it never heard of."""
    exits = [d for d in deliveries if d.action == Delivery.EXIT]
    if not exits:
        return {}
    earlier = collections.defaultdict(list)
    for customer_id, delivery_id, action, state, may_have_arrived in (
        Delivery.objects.filter(sync=sync, customer_id__in={d.customer_id for d in exits}, id__lt=max(d.pk for d in exits))
        .exclude(state=Delivery.CANCELLED)
        .order_by("id")
        .values_list("customer_id", "id", "action", "state", "may_have_arrived")
    ):
        earlier[customer_id].append((delivery_id, action, state, may_have_arrived))
    never = {}
    for exit_row in exits:
        before = [e for e in earlier[exit_row.customer_id] if e[0] < exit_row.pk]
        if not before:
            never[exit_row.pk] = "the destination never had this person: no entry was sent before this exit"
            continue
        _, action, state, may_have_arrived = before[-1]
        if action == Delivery.ENTER and state in NEVER_REACHED and not may_have_arrived:
            never[exit_row.pk] = f"the destination never had this person: their entry was {NEVER_REACHED[state]}"
    return never


def _build_rows(sync: Sync, deliveries: list[Delivery]):
    rows, skipped = [], _exits_without_entry(sync, deliveries)
    policy = sync.policy()
    for delivery in deliveries:
        if delivery.pk in skipped:
            continue
        if sync.additive_only and delivery.action == Delivery.EXIT:  # queued before the sync became additive only
            skipped[delivery.pk] = ADDITIVE_ONLY
            continue
        if sync.test_cohort_only and not (delivery.person and delivery.person.is_test):
            skipped[delivery.pk] = "not an internal test account (the sync sends the test cohort only)"
            continue
        payload = delivery.payload
        if payload is None:
            payload = payload_for(sync, delivery.person, policy=policy) if delivery.person else None
        if payload is None:
            skipped[delivery.pk] = (
                no_identifier_reason(sync, policy) if delivery.person else "the person was erased before it was sent"
            )
            continue
        rows.append(
            OutRow(
                delivery.pk,
                delivery.action,
                payload["identifier"],
                delivery.changed_at,
                payload["fields"],
                sync,
                payload.get("identifiers") or {},
            )
        )
    return rows, skipped


@dataclass
class Job:
    """One claimed batch on its way: prepared on the dispatcher, sent from the pool. Its rows
    may belong to several syncs (where the transport mixes them into one request)."""

    batch_id: uuid.UUID
    attempt: int
    lane: str
    rows: list[OutRow]
    runs: dict  # sync id → SyncRun
    syncs: dict  # sync id → Sync
    hedge: bool = False
    calls: list[Future] = field(default_factory=list)
    started: float = 0.0  # monotonic, when the first call was submitted
    settled: threading.Event = field(default_factory=threading.Event)  # answered, or its sender gone
    admitted: bool = False  # its first call got through the gate (set on the pool thread)
    sent_at: object = None

    @property
    def sync(self) -> Sync:
        """The sync the transport is called for (any one: a mixed batch shares mode and endpoint)."""
        return self.rows[0].sync

    @property
    def timeout(self) -> float:
        return min(s.request_timeout_s for s in self.syncs.values())

    def rows_of(self, sync_id: int) -> list[OutRow]:
        return [r for r in self.rows if r.sync.pk == sync_id]


def _sent_rows(rows: list[OutRow]) -> list[dict]:
    return [
        {
            "delivery": r.delivery_id,
            "action": r.action,
            "identifier": r.identifier,
            "fields": r.fields,
            **({"identifiers": r.identifiers} if r.identifiers else {}),
        }
        for r in rows
    ]


REPORT_SAMPLES = 20


def merge_report(details: dict | None, report: dict) -> dict:
    """A run's platform report over all its requests: counts add up, samples and ids gather
    (the first REPORT_SAMPLES), anything else keeps its latest value."""
    merged = dict(details or {})
    for name, value in report.items():
        before = merged.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float, list)):
            merged[name] = value
        elif isinstance(value, list):
            merged[name] = ((before if isinstance(before, list) else []) + value)[:REPORT_SAMPLES]
        else:
            merged[name] = (before if isinstance(before, (int, float)) and not isinstance(before, bool) else 0) + value
    return merged


def prepare_batch(batch_id: uuid.UUID, attempt: int, lane: str, *, syncs: dict, run_for, summary: Summary) -> Job | None:
    """Load a claimed batch, skip what must not go, record a dry run. Returns the job to send,
    or None when nothing is left to send."""
    deliveries = list(Delivery.objects.filter(batch_id=batch_id, state=Delivery.SENDING).select_related("person").order_by("id"))
    by_sync = collections.defaultdict(list)
    for delivery in deliveries:
        by_sync[delivery.sync_id].append(delivery)
    rows, runs = [], {}
    for sync_id, of_sync in by_sync.items():
        sync = syncs[sync_id]
        run = runs[sync_id] = run_for(sync)
        built, skipped = _build_rows(sync, of_sync)
        if skipped:
            for delivery_id, reason in skipped.items():
                Delivery.objects.filter(pk=delivery_id).update(state=Delivery.SKIPPED, last_error=reason, run=run)
            run.skipped += len(skipped)
            summary.skipped += len(skipped)
        # a batch retried within the same run was planned on its first attempt already
        run.planned += sum(1 for d in of_sync if d.run_id != run.pk)
        if built and sync.dry_run:
            with transaction.atomic():
                for row in built:
                    Delivery.objects.filter(pk=row.delivery_id).update(
                        state=Delivery.DRY_RUN, run=run, payload={"identifier": row.identifier, "fields": row.fields}
                    )
                DeliveryBatch.objects.create(
                    batch_id=batch_id, sync=sync, run=run, attempt=attempt, rows=_sent_rows(built), error="dry run: not sent"
                )
            summary.skipped += len(built)
            continue
        rows += built
    if not rows:
        return None
    return Job(batch_id, attempt, lane, rows, runs, {r.sync.pk: r.sync for r in rows})


def record_sent(job: Job, result, *, duration_ms: float, summary: Summary) -> None:
    acked = timezone.now()
    accepted, rejected = set(result.accepted), result.rejected
    with transaction.atomic():
        for sync_id, sync in job.syncs.items():
            run, rows = job.runs[sync_id], job.rows_of(sync_id)
            ids = [r.delivery_id for r in rows]
            sent = Delivery.objects.filter(pk__in=[i for i in ids if i in accepted], state=Delivery.SENDING).update(
                state=Delivery.SENT, acknowledged_at=acked, response_status=result.status, run=run, last_error=""
            )
            refused = {i: rejected[i] for i in ids if i in rejected}
            for delivery_id, reason in refused.items():
                Delivery.objects.filter(pk=delivery_id).update(
                    state=Delivery.REJECTED, acknowledged_at=acked, response_status=400, last_error=reason[:2000], run=run
                )
            DeliveryBatch.objects.create(
                batch_id=job.batch_id,
                sync=sync,
                run=run,
                attempt=job.attempt,
                sent_at=job.sent_at,
                duration_ms=duration_ms,
                status=result.status,
                rows=_sent_rows(rows),
                error="; ".join(f"row {k}: {v}" for k, v in list(refused.items())[:20]),
            )
            run.sent += sent
            run.rejected += len(refused)
            run.requests += result.requests
            if result.report:
                run.details = merge_report(run.details, result.report)
    summary.sent += len(accepted)
    summary.rejected += len(rejected)
    summary.batches += 1
    for sync_id, sync in job.syncs.items():
        if any(row.is_enter and row.delivery_id in accepted for row in job.rows_of(sync_id)):
            keep_minimum(sync)  # entries acknowledged: removals held for the platform's minimum may go now
    log.debug("batch %s sent %d rejected %d in %.0f ms", job.batch_id, len(accepted), len(rejected), duration_ms)


def record_failed(job: Job, exc: TransportError, *, duration_ms: float, summary: Summary, requests: int = 1) -> None:
    destination = job.sync.destination
    now = timezone.now()
    wait = backoff_seconds(destination, job.attempt, urgent=job.lane == URGENT)
    if exc.retry_after is not None:
        wait = max(wait, exc.retry_after)
        # the whole destination waits, not just this batch: other processes read it here
        Destination.objects.filter(pk=destination.pk).update(not_before=now + timedelta(seconds=exc.retry_after))
    with transaction.atomic():
        for sync_id, sync in job.syncs.items():
            run, rows = job.runs[sync_id], job.rows_of(sync_id)
            ids = [r.delivery_id for r in rows]
            if exc.may_have_arrived:
                Delivery.objects.filter(pk__in=ids, state=Delivery.SENDING).update(may_have_arrived=True)
            dead = Delivery.objects.filter(pk__in=ids, state=Delivery.SENDING, attempts__gte=destination.max_attempts)
            dead_count = dead.update(
                state=Delivery.DEAD,
                last_error=f"gave up after {destination.max_attempts} attempts: {exc}"[:2000],
                response_status=exc.status,
                run=run,
            )
            retried = Delivery.objects.filter(pk__in=ids, state=Delivery.SENDING).update(
                state=Delivery.PENDING,
                next_attempt_at=now + timedelta(seconds=wait),
                last_error=str(exc)[:2000],
                response_status=exc.status,
                run=run,
            )
            DeliveryBatch.objects.create(
                batch_id=job.batch_id,
                sync=sync,
                run=run,
                attempt=job.attempt,
                sent_at=job.sent_at or now,
                duration_ms=duration_ms,
                status=exc.status,
                error=str(exc)[:2000],
                rows=_sent_rows(rows),
            )
            run.retried += retried
            run.requests += requests
            run.error = str(exc)[:2000]
            summary.retried += retried
            summary.dead += dead_count
    summary.batches += 1


# --- the loop -------------------------------------------------------------------------------


def _active_syncs(destination: Destination) -> list[Sync]:
    syncs = Sync.objects.filter(destination=destination, enabled=True, paused=False).select_related(
        "audience", "destination", "identifier_policy", "audience__identifier_policy"
    )
    # suppression syncs first: they are looked at first whenever a slot frees up
    return sorted(syncs, key=lambda s: (not s.is_suppression, s.pk))


def next_due(destination: Destination):
    """When the next row can be claimed. Rows waiting behind an earlier open row of their person
    (a retry, a held removal) are not due: counting them made the sender spin until that row."""
    return (
        Delivery.objects.pending()
        .filter(sync__destination=destination, sync__enabled=True, sync__paused=False)
        .filter(~first_open_before())
        .aggregate(at=Min("next_attempt_at"))["at"]
    )


def _finish(run: SyncRun) -> None:
    run.finished_at = timezone.now()
    # every failed request leaves its error, also when its rows went straight to dead letters
    failed = run.retried or run.error
    if failed and not run.sent:
        run.status = SyncRun.FAILED
    elif failed or run.rejected:
        run.status = SyncRun.PARTIAL
    else:
        run.status = SyncRun.SUCCEEDED
    run.save()


class Lane:
    """What the dispatcher remembers of one lane between claims: the urgent or the additions
    lane of a group of syncs whose rows may share a request (each sync alone where the
    transport cannot mix them). Only this sender changes their rows while it holds the lease,
    so a claim that found nothing is not tried again until something else may have changed
    them: new rows, a finished batch, a retry coming due, a decision on a hold, the end of an
    additions lane's linger."""

    def __init__(self, syncs: list[Sync], name: str):
        self.syncs, self.name = syncs, name
        self.ids = {s.pk for s in syncs}
        self.dirty = True
        self.retry_at = None  # the earliest retried batch's due time, when retry_known
        self.retry_known = False
        self.linger_until = None

    def due_retry(self, now) -> bool:
        if not self.retry_known:
            self.retry_at = (
                Delivery.objects.pending()
                .filter(lane_filter(self.syncs, self.name), batch_id__isnull=False)
                .aggregate(at=Min("next_attempt_at"))["at"]
            )
            self.retry_known = True
        return self.retry_at is not None and self.retry_at <= now

    def lingers(self, limit: int, linger_s: float, now) -> bool:
        """Additions wait up to `linger_s` for company, so that churn on several syncs makes a
        few full requests rather than many small ones (every request risks a 429 that holds
        the whole destination, suppressions included)."""
        if self.name != ADDS or linger_s <= 0:
            return False
        fresh = Delivery.objects.pending().filter(lane_filter(self.syncs, ADDS), batch_id__isnull=True)
        oldest = fresh.order_by("id").values_list("created_at", flat=True).first()
        if oldest is None or oldest <= now - timedelta(seconds=linger_s):
            self.linger_until = None
            return False
        if fresh.values("id")[:limit].count() >= limit:
            self.linger_until = None
            return False
        self.linger_until = oldest + timedelta(seconds=linger_s)
        return True


def lane_groups(syncs: list[Sync], transport) -> list[list[Sync]]:
    """Syncs whose rows may go in one request (the transport says so), suppression first."""
    mixes = getattr(transport, "mixes_syncs", None)
    groups: dict[tuple, list[Sync]] = {}
    for sync in syncs:
        key = ("mixed", sync.mode) if mixes and mixes(sync) else ("alone", sync.pk)
        groups.setdefault(key, []).append(sync)
    return list(groups.values())


class Sender:
    """The dispatcher of one destination while it holds the lease."""

    def __init__(self, destination: Destination, token: str, *, max_seconds: float, sleep, summary: Summary):
        self.destination, self.token, self.sleep, self.summary = destination, token, sleep, summary
        self.deadline = time.monotonic() + max_seconds
        self.runs: dict[int, SyncRun] = {}
        self.jobs: list[Job] = []
        self.lease_lost = False
        self.renewed_at = time.monotonic()
        self.slept = False
        self.analysed_at = 0
        self.gate = DestinationGate(destination.rate_limit_per_s)
        try:
            self.transport = transport_for(destination)
        except TransportError as exc:
            self.transport = None
            self.transport_error = exc
            log.warning("destination %s: %s", destination.key, exc)
        in_flight = getattr(self.transport, "max_in_flight", None) or destination.concurrency or 1
        self.slots = max(1, in_flight)
        self.requests_per_batch = getattr(self.transport, "requests_per_batch", 1)
        # one slot stays free for urgent batches whenever there is more than one
        self.add_slots = max(1, self.slots - 1)
        self.pool = ThreadPoolExecutor(max_workers=2 * self.slots + 1, thread_name_prefix=f"deliver-{destination.pk}")
        self.linger_s = getattr(settings, "DELIVERY_ADDS_LINGER_S", 1.0)
        self.idle_s = getattr(settings, "DELIVERY_IDLE_S", 5.0)
        self.idle_since = None
        self.may_linger = False
        self.wake_cache = None  # (monotonic when computed, _next_wake's answer then)
        self.syncs = []
        self.lanes = {URGENT: [], ADDS: []}
        self._set_syncs(_active_syncs(destination))
        self.newest_seen = None
        self.cancel_seen: dict[int, tuple] = {}
        self.holds_seen = None

    # the lease

    def heartbeat(self, *, before_claim: bool = False) -> bool:
        """Renew the lease every HEARTBEAT_S, and before a claim that follows a wait (a wait can
        outlast the lease: if another sender took it meanwhile, sending on would make two)."""
        if self.lease_lost:
            return False
        if (before_claim and self.slept) or time.monotonic() - self.renewed_at >= HEARTBEAT_S:
            if not renew_lease(self.destination, self.token):
                log.warning("destination %s: lease lost; stopping", self.destination.key)
                self.lease_lost = True
                return False
            self.renewed_at = time.monotonic()
            self.slept = False
            self._refresh_syncs()
            self._look_for_decisions()
        return True

    def _refresh_syncs(self) -> None:
        """Syncs paused, resumed, added or removed while the sender runs."""
        syncs = _active_syncs(self.destination)
        if [(s.pk, s.dry_run, s.test_cohort_only, s.mode, s.additive_only) for s in syncs] == [
            (s.pk, s.dry_run, s.test_cohort_only, s.mode, s.additive_only) for s in self.syncs
        ]:
            return
        self._set_syncs(syncs)
        self.newest_seen = None

    def _set_syncs(self, syncs: list[Sync]) -> None:
        self.wake_cache = None
        self.syncs = syncs
        self.by_id = {s.pk: s for s in syncs}
        groups = lane_groups(syncs, self.transport)
        self.lanes = {
            URGENT: [Lane(group, URGENT) for group in groups],
            ADDS: [
                Lane([s for s in group if not s.is_suppression], ADDS)
                for group in groups
                if any(not s.is_suppression for s in group)
            ],
        }

    def wait(self, seconds: float) -> None:
        self.sleep(seconds)
        self.slept = True

    # what changed

    def _look_for_changes(self) -> None:
        newest = Delivery.objects.aggregate(n=Max("id"))["n"] or 0
        if newest == self.newest_seen:
            return
        self.newest_seen = newest
        for sync in self.syncs:
            pending = sync.deliveries.pending().order_by("-id").values_list("id", flat=True).first()
            if pending is not None and pending != self.cancel_seen.get(sync.pk):
                self.summary.cancelled += cancel_unsent_pairs(sync)
                self.cancel_seen[sync.pk] = pending
                self._touch([sync.pk])

    def _look_for_decisions(self) -> None:
        decided = RemovalHold.objects.filter(sync__in=self.syncs).aggregate(at=Max("decided_at"))["at"]
        if decided != self.holds_seen:
            first = self.holds_seen is None and decided is None
            self.holds_seen = decided
            if not first:
                self.cancel_seen.clear()
                self.newest_seen = None
                self._touch(self.by_id)

    def _touch(self, sync_ids, *, retries: bool = False) -> None:
        self.wake_cache = None
        for lanes in self.lanes.values():
            for lane in lanes:
                if lane.ids & set(sync_ids):
                    lane.dirty = True
                    if retries:
                        lane.retry_known = False

    # claiming

    def _run_for(self, sync: Sync) -> SyncRun:
        run = self.runs.get(sync.pk)
        if run is None:
            run = self.runs[sync.pk] = SyncRun.objects.create(
                sync=sync, kind=SyncRun.DRY_RUN if sync.dry_run else SyncRun.DELIVER
            )
        return run

    def _claim(self, lane: Lane) -> Job | None:
        """The next batch of a lane ready to go, or None when the lane has nothing now."""
        limit = min(self.destination.batch_size, getattr(self.transport, "max_batch", self.destination.batch_size))
        expedited = False
        while True:
            now = timezone.now()
            retries = lane.due_retry(now)
            if not retries and lane.lingers(limit, self.linger_s, now):
                return None
            claimed = claim_batch(lane.syncs, limit, retries=retries, lane=lane.name)
            if not claimed and lane.name == URGENT and not expedited:
                # an exit held up by its person's entry waiting for a retry: bring the retry forward
                expedited = True
                if expedite_blocking_entries(lane.syncs):
                    lane.retry_known = False
                    continue
            if not claimed:
                return None
            if retries:
                lane.retry_known = False
            job = prepare_batch(*claimed, lane.name, syncs=self.by_id, run_for=self._run_for, summary=self.summary)
            if job is None:
                continue  # all skipped or a dry run: nothing to send, look for the next batch
            job.hedge = (
                lane.name == URGENT
                and getattr(self.transport, "hedge", False)
                and all(s.mode == Sync.MEMBERSHIP for s in job.syncs.values())
            )
            return job

    def _fill(self) -> bool:
        """Claim batches into free slots, urgent ones first. True if any was started."""
        started = False
        now = timezone.now()
        for name in (URGENT, ADDS):
            for lane in self.lanes[name]:
                if lane.due_retry(now) or (lane.linger_until and lane.linger_until <= now):
                    lane.dirty = True
                while lane.dirty and self._free(name):
                    if not self.heartbeat(before_claim=True):
                        return started
                    job = self._claim(lane)
                    if job is None:
                        lane.dirty = False
                        break
                    self._start(job)
                    started = True
        return started

    def _free(self, name: str) -> bool:
        if len(self.jobs) >= self.slots:
            return False
        # no new claim while this lane's batches already waiting at the gate fill the time
        # ahead: rows that come meanwhile go out in the next batch, together, rather than one
        # batch each queueing behind the rate limit (2 requests/s and 4 purchases/s made a
        # backlog of one-row batches that grew by the second)
        waiting = sum(1 for j in self.jobs if j.lane == name and not j.admitted)
        if waiting and waiting * self.gate.interval * self.requests_per_batch >= CLAIM_AHEAD_S:
            return False
        return name == URGENT or sum(1 for j in self.jobs if j.lane == ADDS) < self.add_slots

    # sending

    def _start(self, job: Job) -> None:
        job.sent_at = timezone.now()
        job.started = time.monotonic()
        if self.transport is None:
            failed = Future()
            failed.set_exception(self.transport_error)
            job.calls.append(failed)
        else:
            job.calls.append(self.pool.submit(self._call, job))
        self.jobs.append(job)

    def _call(self, job: Job):
        """One request, on a pool thread: through the gate, with the sync's deadline. A hedge
        still at the gate when its batch was answered, or when its sender stopped (a later
        sender has a gate of its own, and Retry-Afters this one never hears of), never goes."""
        ticket = self.gate.enter(urgent=job.lane == URGENT, abandoned=job.settled.is_set)
        if ticket is None:
            raise TransportError("not sent: the batch was answered on another connection")
        job.admitted = True
        try:
            with paced(self.gate.pace):  # each request of the call counts against the rate limit
                result = self.transport.send(job.rows, batch_id=str(job.batch_id), sync=job.sync, timeout=job.timeout)
        except TransportError as exc:
            self.gate.leave(ticket, answered=exc.status is not None, retry_after=exc.retry_after)
            raise
        except Exception as exc:  # a transport bug must not kill the sender: retry it as a failure
            self.gate.leave(ticket, answered=False)
            raise TransportError(f"unexpected error: {exc.__class__.__name__}: {exc}") from exc
        self.gate.leave(ticket, answered=True)
        return result

    def _hedge(self) -> None:
        after = max(HEDGE_AFTER_S, 4 * self.gate.usual_answer_s())
        now = time.monotonic()
        for job in self.jobs:
            if job.hedge and len(job.calls) == 1 and not job.calls[0].done() and now - job.started >= after:
                job.calls.append(self.pool.submit(self._call, job))
                self.summary.hedged += 1

    def _collect(self) -> None:
        """Record every job that has its answer: the first success of its calls, else, once all
        its calls are done, the failure."""
        for job in list(self.jobs):
            done = [c for c in job.calls if c.done()]
            success = next((c for c in done if c.exception() is None), None)
            if success is None and len(done) < len(job.calls):
                continue  # a hedged call may still answer
            job.settled.set()
            self.jobs.remove(job)
            duration_ms = (time.monotonic() - job.started) * 1000
            if success is not None:
                record_sent(job, success.result(), duration_ms=duration_ms, summary=self.summary)
            else:
                errors = [c.exception() for c in done]
                exc = next((e for e in errors if e.retry_after is not None), errors[0])
                if any(e.may_have_arrived for e in errors):
                    exc.may_have_arrived = True
                record_failed(job, exc, duration_ms=duration_ms, summary=self.summary, requests=len(errors))
                self._touch(job.syncs, retries=True)
            self._touch(job.syncs)
            if connection.vendor == "postgresql" and self.summary.sent - self.analysed_at >= ANALYZE_EVERY_ROWS:
                with connection.cursor() as cursor:
                    cursor.execute(f"ANALYZE {connection.ops.quote_name(Delivery._meta.db_table)}")
                self.analysed_at = self.summary.sent

    def _wait_for_answers(self, timeout: float) -> None:
        calls = [c for job in self.jobs for c in job.calls if not c.done()]
        if calls:
            wait_futures(calls, timeout=timeout, return_when=FIRST_COMPLETED)

    def _next_wake(self):
        """Seconds until something may be claimable, or None when nothing is due at all. The
        answer holds until something changes (new rows, a finished batch, a decision): an idle
        sender polls every POLL_S, and asking the database each time (next_due reads every
        pending row) took half of its time while additions lingered."""
        if self.wake_cache is not None:
            computed_at, wake = self.wake_cache
            return None if wake is None else wake - (time.monotonic() - computed_at)
        due = next_due(self.destination)
        if due is None:
            self.wake_cache = (time.monotonic(), None)
            return None
        wake = max(self.gate.held_for(), (due - timezone.now()).total_seconds())
        if wake <= 0:
            lingering = [lane.linger_until for lane in self.lanes[ADDS] if lane.linger_until]
            if lingering:
                wake = (min(lingering) - timezone.now()).total_seconds()
                self.wake_cache = (time.monotonic(), wake)
                return wake
            # due now, yet no lane knew: rows changed under us (a hold decided, rows put back)
            for lanes in self.lanes.values():
                for lane in lanes:
                    lane.dirty = True
                    lane.retry_known = False
            return wake
        self.wake_cache = (time.monotonic(), wake)
        return wake

    def _linger(self) -> bool:
        """Nothing to send: stay a few seconds more, looking for new rows every POLL_S, so a
        steady stream of changes is sent within POLL_S rather than after a new task has made its
        way through the worker's queue. Not when the live senders of other destinations would
        leave no worker for evaluation."""
        if self.idle_since is None:
            self.idle_since = time.monotonic()
            workers = settings.Q_CLUSTER.get("workers", 2)
            others = Destination.objects.filter(lease_until__gt=timezone.now()).exclude(pk=self.destination.pk).count()
            self.may_linger = others < workers - 1
        return self.may_linger and time.monotonic() - self.idle_since < self.idle_s

    def run(self) -> None:
        recover_orphans(self.destination)
        if self.destination.not_before and self.destination.not_before > timezone.now():
            self.gate.hold((self.destination.not_before - timezone.now()).total_seconds())
        try:
            while True:
                self._collect()
                if self.lease_lost or time.monotonic() >= self.deadline:
                    if not self.jobs:
                        return
                    self._wait_for_answers(POLL_S)
                    continue
                self.heartbeat()
                self._hedge()
                self._look_for_changes()
                if self.gate.held_for() <= WAIT_HORIZON_S and self._fill():
                    self.idle_since = None
                    continue
                if self.jobs:
                    self._wait_for_answers(POLL_S)
                    continue
                wake = self._next_wake()
                if wake is None or wake > WAIT_HORIZON_S:
                    if not self._linger():
                        return
                    wake = POLL_S
                self.wait(min(wake, POLL_S) if wake > 0 else POLL_S)
        finally:
            for job in self.jobs:
                job.settled.set()
            self.pool.shutdown(wait=False, cancel_futures=True)


def deliver_destination(destination_id: int, *, max_seconds: float = 240, sleep=time.sleep) -> Summary:
    """Send what is due for one destination, until nothing is due soon or time is up."""
    token = lease_token()
    summary = Summary(destination_id)
    if not acquire_lease(destination_id, token):
        summary.leased = False
        return summary
    sender = None
    try:
        destination = Destination.objects.get(pk=destination_id)
        sender = Sender(destination, token, max_seconds=max_seconds, sleep=sleep, summary=summary)
        sender.run()
    finally:
        runs = sender.runs if sender else {}
        for run in runs.values():
            _finish(run)
        summary.runs = {sync_id: run.pk for sync_id, run in runs.items()}
        release_lease(destination_id, token)
    return summary
