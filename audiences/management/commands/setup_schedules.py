from importlib import import_module

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import transaction
from django_q.models import Schedule

PREFIX = "downstream:"


def declared_schedules():
    """Every installed app may declare `SCHEDULES` in its `schedules` module."""
    declared = []
    for config in apps.get_app_configs():
        try:
            module = import_module(f"{config.name}.schedules")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.schedules":
                raise
            continue
        declared.extend(module.SCHEDULES)
    return declared


class Command(BaseCommand):
    help = "Create or update the worker's schedules as declared in code; remove ones no longer declared. Idempotent."

    @transaction.atomic
    def handle(self, *args, **options):
        declared = declared_schedules()
        names = []
        for spec in declared:
            name = PREFIX + spec["name"]
            names.append(name)
            values = {k: v for k, v in spec.items() if k != "name"}
            _, created = Schedule.objects.update_or_create(name=name, defaults=values)
            self.stdout.write(f"{'created' if created else 'kept'} {name}: {values['func']}")
        stale = Schedule.objects.filter(name__startswith=PREFIX).exclude(name__in=names)
        for schedule in stale:
            self.stdout.write(f"removed {schedule.name}")
        stale.delete()
