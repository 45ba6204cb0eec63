"""The full reconcile of a Meta sync: every person Downstream has in the audience is uploaded
again through `POST /{audience_id}/usersreplace`, in one replace session, and Meta then drops
everyone the session did not name. It repairs what add and remove calls cannot: removals that
were lost, people another tool put in the audience, identifiers that changed since an entry.

One session: `session_id` (a random 62-bit number), `batch_seq` from 1, `last_batch_flag` on
the last batch and `estimated_num_total`; at most 10,000 rows a batch. Batches keep to the
destination's rate limit and its Retry-After (`not_before`, shared with the sender); a batch
that fails for now is sent again with the same `batch_seq`, a permanent failure ends the
session unfinished (Meta removes nobody for a session that never sent its last batch). While
the session is open Meta holds the audience's add and remove calls, which the sender retries.

It runs weekly (`META_RECONCILE_EVERY_DAYS`, from the daily `meta-reconcile-due` schedule),
or now: `python manage.py meta_reconcile SYNC_KEY`. Each run is a SyncRun whose details say
`"operation": "usersreplace"`, with Meta's counts.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from ...delivery import backoff_seconds, merge_report
from ...http import RateLimiter, TransportError
from ...models import Destination, RemovalHold, Sync, SyncRun
from ...readback import downstream_members
from ..base import OutRow
from ..registry import spec_for, transport_for
from .transport import MAX_BATCH

log = logging.getLogger(__name__)

OPERATION = "usersreplace"
READ_CHUNK = 2000


class ReconcileRefused(ValueError):
    """A sync a full replace must not touch now; the message says why and what to do."""


def reconcile_problem(sync: Sync) -> str | None:
    if sync.destination.kind != "meta":
        return f"{sync.key} sends to {sync.destination.get_kind_display()}, not Meta: only Meta audiences are replaced"
    if not sync.enabled or sync.paused:
        return f"{sync.key} is {'paused' if sync.paused else 'disabled'}: resume it first"
    if sync.dry_run:
        return f"{sync.key} is a dry run: a replace would send for real; take it out of dry run first"
    if sync.additive_only:
        return f"{sync.key} only adds people, and a replace removes everyone it does not name"
    if sync.audience.is_failing:
        return f"{sync.audience.name} is failing to evaluate, so its members are not to be trusted: fix its rule first"
    if hold := RemovalHold.objects.filter(sync=sync, decision=RemovalHold.PENDING).first():
        return (
            f"{sync.key} has {hold.removals:,} removals held ({hold.reason}), which a replace would apply at once: "
            "approve or discard them on the sync page first"
        )
    return None


def _rows(sync: Sync, spec, batch_size: int):
    """Each member's row, in chunks of at most `batch_size`, and how many had no identifier."""
    chunk, skipped = [], 0
    members = downstream_members(sync).select_related("person").order_by("pk")
    for number, membership in enumerate(members.iterator(chunk_size=READ_CHUNK)):
        identifiers = spec.identifiers_for(sync, membership.person)
        if not identifiers:
            skipped += 1
            continue
        chunk.append(OutRow(number, "enter", next(iter(identifiers.values())), membership.entered_at, {}, sync, identifiers))
        if len(chunk) == batch_size:
            yield chunk, skipped
            chunk, skipped = [], 0
    yield chunk, skipped


def _lookahead(chunks):
    """(chunk, skipped, is_last) for each non-empty chunk, so the last batch carries its flag."""
    held = None
    for chunk, skipped in chunks:
        if held is not None and chunk:
            yield (*held, False)
            held = None
        if chunk:
            held = (chunk, skipped)
        elif held is not None:
            held = (held[0], held[1] + skipped)
    if held is not None:
        yield (*held, True)


def reconcile(sync: Sync, *, batch_size: int = MAX_BATCH, sleep=time.sleep) -> SyncRun:
    """Replace the Meta audience's members with Downstream's, `batch_size` (at most 10,000)
    people a request. Raises ReconcileRefused when the sync must not be replaced now; a failure
    on the way is recorded on the run."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ReconcileRefused(f"batch_size: use 1 to {MAX_BATCH:,} people a request")
    if problem := reconcile_problem(sync):
        raise ReconcileRefused(problem)
    spec = spec_for(sync.destination.kind)
    total = downstream_members(sync).count()
    if not total:
        raise ReconcileRefused(f"{sync.audience.name} has nobody Downstream sent: a replace would empty the Meta audience")
    destination = sync.destination
    session_id = random.getrandbits(62) + 1
    run = SyncRun.objects.create(
        sync=sync, kind=SyncRun.DELIVER, planned=total, details={"operation": OPERATION, "session_id": str(session_id)}
    )
    limiter = RateLimiter(destination.rate_limit_per_s, sleep=sleep)
    try:
        transport = transport_for(destination)
        audience_id = transport.audience_id(sync)
        keys = spec.keys_for(sync)
        batches = 0
        for rows, skipped, last in _lookahead(_rows(sync, spec, batch_size)):
            batches += 1
            run.skipped += skipped
            session = {"session_id": session_id, "batch_seq": batches, "last_batch_flag": last, "estimated_num_total": total}
            report = _send(transport, destination, audience_id, rows, keys, session, run, limiter, sleep)
            run.details = merge_report(run.details, report)
            run.sent += len(rows)
            run.save(update_fields=["sent", "skipped", "requests", "retried", "details"])
        run.details = {**run.details, "batches": batches}
        if batches:
            run.status = SyncRun.SUCCEEDED
        else:
            run.status = SyncRun.FAILED
            run.error = (
                f"none of the {total:,} people has an identifier the sync sends to Meta "
                f"({', '.join(k.label for k in keys)}): nothing was replaced"
            )
    except TransportError as exc:
        run.status = SyncRun.FAILED
        run.error = f"the replace stopped unfinished, so Meta removed nobody: {exc}"[:2000]
        log.warning("reconcile of %s failed: %s", sync.key, exc)
    run.finished_at = timezone.now()
    run.save()
    return run


def _send(transport, destination: Destination, audience_id: str, rows, keys, session, run, limiter, sleep) -> dict:
    """One batch, sent again (same batch_seq) until it goes, for at most max_attempts tries."""
    attempt = 0
    while True:
        attempt += 1
        not_before = Destination.objects.filter(pk=destination.pk).values_list("not_before", flat=True).first()
        if not_before and not_before > timezone.now():
            sleep((not_before - timezone.now()).total_seconds())
        limiter.wait()
        run.requests += 1
        try:
            return transport.upload("POST", audience_id, "usersreplace", rows, keys, session=session)
        except TransportError as exc:
            if exc.permanent or attempt >= destination.max_attempts:
                raise
            wait = backoff_seconds(destination, attempt)
            if exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
                Destination.objects.filter(pk=destination.pk).update(
                    not_before=timezone.now() + timedelta(seconds=exc.retry_after)
                )
            run.retried += len(rows)
            log.info("reconcile batch %s of %s: %s; again in %.1f s", session["batch_seq"], run.sync.key, exc, wait)
            sleep(wait)


def reconcile_due(now: datetime | None = None) -> list[int]:
    """Daily: queue a reconcile for every Meta sync whose last one (or its creation) is
    META_RECONCILE_EVERY_DAYS old. 0 days: never on a schedule."""
    from django_q.tasks import async_task

    every = settings.META_RECONCILE_EVERY_DAYS
    if every <= 0:
        return []
    now = now or timezone.now()
    due = []
    for sync in Sync.objects.filter(destination__kind="meta", enabled=True, paused=False).select_related(
        "audience", "destination"
    ):
        if reconcile_problem(sync):
            continue
        last = (
            SyncRun.objects.filter(sync=sync, details__operation=OPERATION)
            .order_by("-started_at")
            .values_list("started_at", flat=True)
            .first()
        )
        if (last or sync.created_at) <= now - timedelta(days=every):
            async_task("syncs.destinations.meta.reconcile.reconcile_sync", sync.pk, task_name=f"reconcile sync {sync.pk}")
            due.append(sync.pk)
    return due


def reconcile_sync(sync_id: int) -> dict:
    """Worker entry point: one sync's reconcile, by id."""
    sync = Sync.objects.select_related("audience", "destination").filter(pk=sync_id).first()
    if sync is None:
        return {"refused": f"there is no sync {sync_id} any more"}
    try:
        run = reconcile(sync)
    except ReconcileRefused as exc:
        return {"refused": str(exc)}
    return {"run": run.pk, "status": run.status, "sent": run.sent, "error": run.error}
