"""Periodic tasks of the audiences side, created by `manage.py setup_schedules`."""

from django_q.models import Schedule

SCHEDULES = [
    {
        # Full evaluations: interval and cron audiences when they are due, realtime audiences
        # hourly as a consistency check (people leave them by window expiry, audiences/expiry.py);
        # it also starts the expiry waiter when a window is about to end.
        "name": "evaluate-due-audiences",
        "func": "audiences.tasks.evaluate_due_audiences",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
        "repeats": -1,
    },
    {
        # A safety net for realtime evaluation: picks up people queued by ingest whose wake-up
        # task was lost (a broker restart); normally the queue is already empty.
        "name": "evaluate-pending-people",
        "func": "audiences.tasks.evaluate_pending_people",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
        "repeats": -1,
    },
]
