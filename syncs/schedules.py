from django.conf import settings
from django_q.models import Schedule

SCHEDULES = [
    {
        "name": "deliver-due",
        "func": "syncs.tasks.deliver_due",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
        "repeats": -1,
    },
    {
        "name": "check-alerts",
        "func": "syncs.tasks.check_alerts",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
        "repeats": -1,
    },
    {
        # bounded storage (README "Retention"): what became old since the last pass goes
        "name": "retention",
        "func": "syncs.tasks.apply_retention",
        "schedule_type": Schedule.HOURLY,
        "repeats": -1,
    },
    {
        # what each ad platform counts of its audiences, and the alerts on it (syncs/readback.py)
        "name": "read-back",
        "func": "syncs.readback.read_back_syncs",
        "schedule_type": Schedule.MINUTES,
        "minutes": settings.READBACK_EVERY_MINUTES,
        "repeats": -1,
    },
    {
        # a Meta sync's weekly full replace, queued for those due (syncs/destinations/meta/reconcile.py)
        "name": "meta-reconcile-due",
        "func": "syncs.destinations.meta.reconcile.reconcile_due",
        "schedule_type": Schedule.DAILY,
        "repeats": -1,
    },
    {
        # what Google made of each request, 30 minutes on, backing off (syncs/destinations/google/status.py)
        "name": "google-request-status",
        "func": "syncs.destinations.google.status.check_request_statuses",
        "schedule_type": Schedule.MINUTES,
        "minutes": 5,
        "repeats": -1,
    },
]
