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
]
