from django.core.management.base import BaseCommand, CommandError

from audiences.evaluation import evaluate_all
from audiences.models import Audience


class Command(BaseCommand):
    help = "Evaluate audiences now (all enabled ones when no key is given, in dependency order)."

    def add_arguments(self, parser):
        parser.add_argument("keys", nargs="*")

    def handle(self, *args, keys, **options):
        missing = set(keys) - set(Audience.objects.filter(key__in=keys).values_list("key", flat=True))
        if missing:
            raise CommandError(f"no audience with key {', '.join(sorted(missing))}")
        for evaluation in evaluate_all(keys or None):
            self.stdout.write(
                f"{evaluation.audience_key}: size {evaluation.size:,}, +{len(evaluation.entries):,} entered, "
                f"-{len(evaluation.exits):,} exited ({evaluation.duration_ms:,.0f} ms)"
            )
        tried = Audience.objects.filter(key__in=keys) if keys else Audience.objects.filter(enabled=True)
        failing = list(tried.filter(evaluation_failed_at__isnull=False).order_by("key"))
        for audience in failing:
            self.stderr.write(f"{audience.key}: evaluation failing: {audience.evaluation_error}")
        if failing:
            raise CommandError(f"{len(failing)} audience(s) failed to evaluate (above); the others were evaluated")
