from django.core.management.base import BaseCommand, CommandError

from audiences.evaluation import evaluate_all, follows_windows
from audiences.models import Audience


class Command(BaseCommand):
    help = (
        "Evaluate realtime audiences in full now (all enabled ones when no key is given) and print whom each "
        "had to correct: people window expiry missed, a bug (the worker does this hourly, REALTIME_CHECK_EVERY)."
    )

    def add_arguments(self, parser):
        parser.add_argument("keys", nargs="*")

    def handle(self, *args, keys, **options):
        chosen = Audience.objects.filter(key__in=keys) if keys else Audience.objects.filter(enabled=True)
        found = {a.key: a for a in chosen}
        if missing := set(keys) - set(found):
            raise CommandError(f"no audience with key {', '.join(sorted(missing))}")
        if keys and (others := sorted(key for key, a in found.items() if not follows_windows(a))):
            raise CommandError(
                f"{', '.join(others)}: not a realtime rule audience (evaluated in full on its cadence: use evaluate)"
            )
        realtime = [key for key, a in found.items() if follows_windows(a)]
        corrected = 0
        for evaluation in evaluate_all(realtime) if realtime else []:
            if evaluation.differences is None:
                self.stdout.write(
                    f"{evaluation.audience_key}: size {evaluation.size:,}; evaluated in full, not checked (its "
                    "definition changed since its last full evaluation, or it was failing)"
                )
                continue
            corrected += evaluation.differences
            self.stdout.write(
                f"{evaluation.audience_key}: size {evaluation.size:,}, {evaluation.differences:,} corrected"
                + (" (people window expiry missed: logged, and alerted as failing evaluation)" if evaluation.differences else "")
            )
        failing = list(Audience.objects.filter(key__in=realtime, evaluation_failed_at__isnull=False).order_by("key"))
        for audience in failing:
            self.stderr.write(f"{audience.key}: evaluation failing: {audience.evaluation_error}")
        if corrected or failing:
            raise CommandError(
                f"corrected {corrected:,} {'person' if corrected == 1 else 'people'} window expiry had missed (a bug: "
                f"see the log) and {len(failing)} audience(s) failing"
            )
