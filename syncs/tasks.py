"""Worker entry points of the sync side. Tasks take ids, are idempotent, call one service."""

import time

from django.utils import timezone
from django_q.tasks import async_task

from . import retention  # imported at start-up, also for its settings check
from .delivery import (
    HEARTBEAT_S,
    LEASE_SECONDS,
    deliver_destination,
    first_open_before,
    lease_expires_in,
    lease_is_live,
)
from .models import Delivery, Destination


def deliver(destination_id: int, *, sleep=time.sleep):
    """Wake the sender of a destination. A live sender (one that renewed its lease within two
    heartbeats) picks new rows up itself; a lease nobody renews is waited out (a few seconds)
    and taken over, so a worker that died mid-send never leaves its rows waiting for a tick."""
    summary = deliver_destination(destination_id)
    waited = 0.0
    while not summary.leased and not lease_is_live(destination_id) and waited <= LEASE_SECONDS + HEARTBEAT_S:
        pause = min(lease_expires_in(destination_id), LEASE_SECONDS) + 0.05
        sleep(pause)
        waited += pause
        summary = deliver_destination(destination_id)
    if summary.leased and _due_now(destination_id):
        # time was up with work left, or rows came in as the lease was let go: hand over to a
        # fresh task rather than outlive the timeout
        async_task("syncs.tasks.deliver", destination_id, task_name=f"deliver to destination {destination_id}")
    return {
        "sent": summary.sent,
        "rejected": summary.rejected,
        "retried": summary.retried,
        "dead": summary.dead,
        "leased": summary.leased,
    }


def _due_now(destination_id: int) -> bool:
    return (
        Delivery.objects.pending()
        .filter(
            sync__destination_id=destination_id,
            sync__enabled=True,
            sync__paused=False,
            next_attempt_at__lte=timezone.now(),
        )
        .filter(~first_open_before())
        .exists()
    )


def deliver_due():
    """Once a minute: wake a sender for every destination with due rows (retries whose
    backoff ran out, rows a lost task left behind)."""
    woken = []
    for destination_id in Destination.objects.values_list("pk", flat=True):
        if (
            _due_now(destination_id)
            or Delivery.objects.filter(sync__destination_id=destination_id, state=Delivery.SENDING).exists()
        ):
            async_task("syncs.tasks.deliver", destination_id, task_name=f"deliver to destination {destination_id}")
            woken.append(destination_id)
    return woken


def resume_deliveries(sender=None, **kwargs):
    """Receiver of django-q's `post_spawn`: a worker process that starts (a restarted cluster)
    resumes pending deliveries at once instead of waiting for the scheduler's first tick,
    which django-q runs about 30 s after the cluster starts."""
    from audiences.tasks import enqueue_at_worker_start

    enqueue_at_worker_start("syncs.tasks.deliver_due", "resume deliveries")


def check_alerts():
    """Once a minute: refresh a few audiences' identifier coverage, open and resolve alerts,
    send the notifications owed."""
    from audiences.preview import refresh_stale_coverage

    from .monitoring import check_alerts as run_checks
    from .monitoring import notify_alerts

    refresh_stale_coverage()
    result = run_checks()
    result["notified"] = notify_alerts()
    return result


def apply_retention():
    """Every hour: delete what retention no longer keeps, in small chunks, within a budget."""
    run = retention.apply_retention()
    return {**run.deleted, "complete": run.complete}
