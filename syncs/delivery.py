"""The delivery worker: claims outbox rows, sends them in batches, records the answers.

One sender per destination at a time (a lease taken and renewed by conditional UPDATE), so the
destination's rate limit holds however many workers run, and a person's changes leave in the
order they happened. Within that, each row is claimed by a conditional UPDATE too, and a
person's row is only claimed when no earlier row of theirs is still open. A sender that dies
leaves its lease to expire; the next one puts the rows it was sending back in the queue
(at-least-once: the destination may see them twice; they keep their batch id).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q
from django.utils import timezone

from .destinations import OutRow, TransportError, transport_for
from .destinations.base import RateLimiter
from .models import Delivery, DeliveryBatch, Destination, RemovalHold, Sync, SyncRun
from .payload import no_identifier_reason, payload_for

log = logging.getLogger(__name__)

# PostgreSQL plans the claim on its row estimates. A long drain moves rows out of pending far
# from what the last ANALYZE saw, and with autovacuum late or off the planner then prefers walking
# the primary key through every row already sent (a million-row backlog fell from 10 to 3
# requests/s) over the partial index of pending rows. The sender refreshes them this often.
ANALYZE_EVERY_ROWS = 100_000

# A sender waits this long in-process for a retry or a Retry-After before giving up its lease
# (the once-a-minute tick and new changes wake a sender again).
WAIT_HORIZON_S = 10.0
LEASE_SECONDS = 25.0


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
    runs: dict = field(default_factory=dict)


# --- lease ----------------------------------------------------------------------------------


def acquire_lease(destination_id: int, token: str) -> bool:
    now = timezone.now()
    destination = Destination.objects.only("timeout_s").get(pk=destination_id)
    until = now + timedelta(seconds=LEASE_SECONDS)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=token)
    return bool(Destination.objects.filter(free, pk=destination_id).update(lease_owner=token, lease_until=until))


def renew_lease(destination: Destination, token: str) -> bool:
    until = timezone.now() + timedelta(seconds=LEASE_SECONDS)
    return bool(Destination.objects.filter(pk=destination.pk, lease_owner=token).update(lease_until=until))


def release_lease(destination_id: int, token: str) -> None:
    Destination.objects.filter(pk=destination_id, lease_owner=token).update(lease_owner="", lease_until=None)


# --- claiming -------------------------------------------------------------------------------


def recover_orphans(destination: Destination) -> int:
    """Rows left 'sending' by a sender that died. Only the lease holder calls this, so no live
    sender can own them. They go back as they were, batch id included."""
    return Delivery.objects.filter(sync__destination=destination, state=Delivery.SENDING).update(
        state=Delivery.PENDING, next_attempt_at=timezone.now(), last_error="the sender stopped before an answer came"
    )


def cancel_unsent_pairs(sync: Sync) -> int:
    """An entry and an exit of the same person that were never sent cancel out: of a run of
    never-attempted changes, only the last one matters, and only if it differs from where the run
    began (the opposite of its first change). Runs are not always alternating (a test-cohort
    entry repeats an unsent entry), and a held row splits a run: its decision is still to come."""
    pending = Delivery.objects.filter(sync=sync, state=Delivery.PENDING, attempts=0)
    repeated = pending.values("customer_id").annotate(n=Count("pk")).filter(n__gt=1).values("customer_id")
    rows = (
        Delivery.objects.filter(sync=sync, customer_id__in=repeated, state__in=(Delivery.PENDING, Delivery.HELD))
        .order_by("customer_id", "id").values_list("customer_id", "id", "action", "state", "attempts")
    )
    runs: list[list[tuple[int, str]]] = [[]]
    person = None
    for customer_id, delivery_id, action, state, attempts in rows:
        unsent = state == Delivery.PENDING and attempts == 0
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
        Delivery.objects.filter(pk__in=cancel, state=Delivery.PENDING, attempts=0).update(
            state=Delivery.CANCELLED, last_error="cancelled out by a later change that was not sent either"
        )
    return len(cancel)


def _first_open_before():
    """A row whose person still has an earlier open row must wait for it."""
    return Exists(
        Delivery.objects.filter(
            sync_id=OuterRef("sync_id"), customer_id=OuterRef("customer_id"), id__lt=OuterRef("id"),
            state__in=Delivery.OPEN_STATES,
        )
    )


def claim_batch(sync: Sync, limit: int, *, retries: bool = True) -> tuple[uuid.UUID, int] | None:
    """Claim a retried batch whole (same rows, same batch id), else up to `limit` fresh rows in
    order. Returns (batch id, attempt) or None. `retries=False`: the caller knows no retried
    batch is due, and the look-up (which reads every pending row when there is none) is skipped."""
    now = timezone.now()
    due = Delivery.objects.filter(sync=sync, state=Delivery.PENDING, next_attempt_at__lte=now)
    retry = due.filter(batch_id__isnull=False).order_by("id").values_list("batch_id", flat=True).first() if retries else None
    if retry:
        claimed = Delivery.objects.filter(sync=sync, state=Delivery.PENDING, batch_id=retry).update(
            state=Delivery.SENDING, attempts=F("attempts") + 1
        )
        attempt = Delivery.objects.filter(batch_id=retry).aggregate(n=Min("attempts"))["n"] or 1
        return (retry, attempt) if claimed else None
    batch_id = uuid.uuid4()
    candidates = (
        due.filter(batch_id__isnull=True).filter(~_first_open_before()).order_by("id").values_list("id", flat=True)[:limit]
    )
    claimed = Delivery.objects.filter(pk__in=list(candidates), state=Delivery.PENDING).update(
        state=Delivery.SENDING, batch_id=batch_id, attempts=F("attempts") + 1
    )
    return (batch_id, 1) if claimed else None


# --- sending --------------------------------------------------------------------------------


def backoff_seconds(destination: Destination, attempts: int) -> float:
    """Exponential, capped, with jitter (half fixed, half random) so retries spread out."""
    ceiling = min(destination.retry_cap_s, destination.retry_base_s * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + random.random() * ceiling / 2


def _build_rows(sync: Sync, deliveries: list[Delivery]):
    rows, skipped = [], {}
    policy = sync.policy()
    for delivery in deliveries:
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
        rows.append(OutRow(delivery.pk, delivery.action, payload["identifier"], delivery.changed_at, payload["fields"]))
    return rows, skipped


def send_batch(sync: Sync, batch_id: uuid.UUID, attempt: int, *, transport, limiter, run: SyncRun, summary: Summary) -> None:
    deliveries = list(Delivery.objects.filter(batch_id=batch_id, state=Delivery.SENDING).select_related("person").order_by("id"))
    if not deliveries:
        return
    rows, skipped = _build_rows(sync, deliveries)
    now = timezone.now()
    if skipped:
        for delivery_id, reason in skipped.items():
            Delivery.objects.filter(pk=delivery_id).update(state=Delivery.SKIPPED, last_error=reason, run=run)
        run.skipped += len(skipped)
        summary.skipped += len(skipped)
    # a batch retried within the same run was planned on its first attempt already
    run.planned += sum(1 for d in deliveries if d.run_id != run.pk)
    if not rows:
        return
    sent_rows = [{"delivery": r.delivery_id, "action": r.action, "identifier": r.identifier, "fields": r.fields} for r in rows]
    if sync.dry_run:
        with transaction.atomic():
            for row in rows:
                Delivery.objects.filter(pk=row.delivery_id).update(
                    state=Delivery.DRY_RUN, run=run, payload={"identifier": row.identifier, "fields": row.fields}
                )
            DeliveryBatch.objects.create(batch_id=batch_id, sync=sync, run=run, attempt=attempt, rows=sent_rows, error="dry run: not sent")
        summary.skipped += len(rows)
        return
    limiter.wait()
    started = time.perf_counter()
    try:
        if transport is None:
            raise TransportError("the destination is not configured", permanent=True)
        result = transport.send(rows, batch_id=str(batch_id), sync=sync)
    except TransportError as exc:
        _failed(sync, batch_id, attempt, rows, exc, run=run, summary=summary, sent_rows=sent_rows,
                duration_ms=(time.perf_counter() - started) * 1000)
        return
    duration_ms = (time.perf_counter() - started) * 1000
    acked = timezone.now()
    with transaction.atomic():
        Delivery.objects.filter(pk__in=result.accepted, state=Delivery.SENDING).update(
            state=Delivery.SENT, acknowledged_at=acked, response_status=result.status, run=run, last_error=""
        )
        for delivery_id, reason in result.rejected.items():
            Delivery.objects.filter(pk=delivery_id).update(
                state=Delivery.REJECTED, acknowledged_at=acked, response_status=400, last_error=reason[:2000], run=run
            )
        DeliveryBatch.objects.create(
            batch_id=batch_id, sync=sync, run=run, attempt=attempt, sent_at=now, duration_ms=duration_ms,
            status=result.status, rows=sent_rows,
            error="; ".join(f"row {k}: {v}" for k, v in list(result.rejected.items())[:20]),
        )
    run.sent += len(result.accepted)
    run.rejected += len(result.rejected)
    run.requests += result.requests
    summary.sent += len(result.accepted)
    summary.rejected += len(result.rejected)
    summary.batches += 1
    log.debug("%s: batch %s sent %d rejected %d in %.0f ms", sync.key, batch_id, len(result.accepted), len(result.rejected), duration_ms)


def _failed(sync, batch_id, attempt, rows, exc: TransportError, *, run, summary, sent_rows, duration_ms):
    destination = sync.destination
    now = timezone.now()
    wait = backoff_seconds(destination, attempt)
    if exc.retry_after is not None:
        wait = max(wait, exc.retry_after)
        # the whole destination waits, not just this batch
        Destination.objects.filter(pk=destination.pk).update(not_before=now + timedelta(seconds=exc.retry_after))
        destination.not_before = now + timedelta(seconds=exc.retry_after)
    ids = [r.delivery_id for r in rows]
    with transaction.atomic():
        dead = Delivery.objects.filter(pk__in=ids, state=Delivery.SENDING, attempts__gte=destination.max_attempts)
        dead_count = dead.update(state=Delivery.DEAD, last_error=f"gave up after {destination.max_attempts} attempts: {exc}"[:2000],
                                 response_status=exc.status, run=run)
        retried = Delivery.objects.filter(pk__in=ids, state=Delivery.SENDING).update(
            state=Delivery.PENDING, next_attempt_at=now + timedelta(seconds=wait), last_error=str(exc)[:2000],
            response_status=exc.status, run=run,
        )
        DeliveryBatch.objects.create(
            batch_id=batch_id, sync=sync, run=run, attempt=attempt, sent_at=now, duration_ms=duration_ms,
            status=exc.status, error=str(exc)[:2000], rows=sent_rows,
        )
    run.retried += retried
    run.requests += 1
    run.error = str(exc)[:2000]
    summary.retried += retried
    summary.dead += dead_count
    summary.batches += 1


# --- the loop -------------------------------------------------------------------------------


def _active_syncs(destination: Destination) -> list[Sync]:
    return list(
        Sync.objects.filter(destination=destination, enabled=True, paused=False).select_related("audience", "destination",
                                                                                                 "identifier_policy",
                                                                                                 "audience__identifier_policy")
    )


def _next_retry_at(sync: Sync):
    """When the sync's earliest retried batch is due; None when there is none."""
    return Delivery.objects.filter(sync=sync, state=Delivery.PENDING, batch_id__isnull=False).aggregate(
        at=Min("next_attempt_at"))["at"]


def _new_rows_since(sync: Sync, seen: tuple | None) -> tuple:
    """What cancel_unsent_pairs depends on and only a change elsewhere can alter while this sender
    holds the lease: the newest pending row (new changes) and the last decision on a hold
    (approved removals become pending again)."""
    newest = Delivery.objects.filter(sync=sync, state=Delivery.PENDING).aggregate(n=Max("id"))["n"] or 0
    decided = RemovalHold.objects.filter(sync=sync).aggregate(at=Max("decided_at"))["at"]
    return (max(newest, seen[0] if seen else 0), decided)


def next_due(destination: Destination):
    """When the next row can be claimed. Rows waiting behind an earlier open row of their person
    (a retry, a held removal) are not due: counting them made the sender spin until that row."""
    return (
        Delivery.objects.filter(sync__destination=destination, sync__enabled=True, sync__paused=False, state=Delivery.PENDING)
        .filter(~_first_open_before())
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


def deliver_destination(destination_id: int, *, max_seconds: float = 240, sleep=time.sleep) -> Summary:
    """Send what is due for one destination, until nothing is due soon or time is up."""
    token = uuid.uuid4().hex
    summary = Summary(destination_id)
    if not acquire_lease(destination_id, token):
        summary.leased = False
        return summary
    deadline = time.monotonic() + max_seconds
    runs: dict[int, SyncRun] = {}
    cancel_seen: dict[int, tuple] = {}  # per sync: _new_rows_since at its last cancel_unsent_pairs
    retry_at: dict[int, object] = {}  # per sync: _next_retry_at, until a retry is claimed or a batch fails
    analysed_at = 0  # summary.sent at the last ANALYZE
    try:
        destination = Destination.objects.get(pk=destination_id)
        recover_orphans(destination)
        limiter = RateLimiter(destination.rate_limit_per_s, sleep=sleep)
        try:
            transport = transport_for(destination)
        except TransportError as exc:
            transport = None
            log.warning("destination %s: %s", destination.key, exc)
        while time.monotonic() < deadline:
            destination.refresh_from_db(fields=["not_before"])
            if destination.not_before and destination.not_before > timezone.now():
                wait = (destination.not_before - timezone.now()).total_seconds()
                if wait > WAIT_HORIZON_S:
                    break
                sleep(wait)
                if not renew_lease(destination, token):
                    log.warning("destination %s: lease lost while waiting; stopping", destination.key)
                    return summary
                continue
            progressed = False
            for sync in _active_syncs(destination):
                # Both look-ups below read every pending row of the sync; at a backlog of a million
                # rows, doing them before every batch held the sender to a fifth of its rate limit.
                # Only this sender changes its rows while it holds the lease, so they are redone
                # only when something else may have changed them.
                seen = _new_rows_since(sync, cancel_seen.get(sync.pk))
                if seen != cancel_seen.get(sync.pk):
                    summary.cancelled += cancel_unsent_pairs(sync)
                    cancel_seen[sync.pk] = seen
                if sync.pk not in retry_at:
                    retry_at[sync.pk] = _next_retry_at(sync)
                limit = min(destination.batch_size, getattr(transport, "max_batch", destination.batch_size))
                retries = retry_at[sync.pk] is not None and retry_at[sync.pk] <= timezone.now()
                claimed = claim_batch(sync, limit, retries=retries)
                if not claimed:
                    continue
                if retries or claimed[1] > 1:
                    retry_at.pop(sync.pk)  # a retried batch was claimed: look again next time
                progressed = True
                run = runs.get(sync.pk) or runs.setdefault(
                    sync.pk, SyncRun.objects.create(sync=sync, kind=SyncRun.DRY_RUN if sync.dry_run else SyncRun.DELIVER)
                )
                retried_before = summary.retried + summary.dead
                send_batch(sync, *claimed, transport=transport, limiter=limiter, run=run, summary=summary)
                if summary.retried + summary.dead != retried_before:
                    retry_at.pop(sync.pk, None)  # the batch failed and waits for its retry
                if connection.vendor == "postgresql" and summary.sent - analysed_at >= ANALYZE_EVERY_ROWS:
                    with connection.cursor() as cursor:
                        cursor.execute(f"ANALYZE {connection.ops.quote_name(Delivery._meta.db_table)}")
                    analysed_at = summary.sent
                if not renew_lease(destination, token):
                    log.warning("destination %s: lease lost; stopping", destination.key)
                    return summary
                if destination.not_before and destination.not_before > timezone.now():
                    break
            if not progressed:
                due = next_due(destination)
                if due is None:
                    break
                wait = (due - timezone.now()).total_seconds()
                if wait > WAIT_HORIZON_S:
                    break
                if wait > 0:
                    sleep(min(wait, WAIT_HORIZON_S))
                # a wait can outlast the lease (up to WAIT_HORIZON_S against 2 * timeout + 5 s):
                # if another sender has taken it meanwhile, sending on would make two senders
                if not renew_lease(destination, token):
                    log.warning("destination %s: lease lost while waiting; stopping", destination.key)
                    return summary
    finally:
        for run in runs.values():
            _finish(run)
        summary.runs = {sync_id: run.pk for sync_id, run in runs.items()}
        release_lease(destination_id, token)
    return summary
