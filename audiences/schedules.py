"""Periodic tasks of the audiences side, created by `manage.py setup_schedules`."""

SCHEDULES = []
