from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from audiences.models import Audience
from syncs.lift import DEFAULT_EVENT, DEFAULT_WINDOW_DAYS, PERIOD_DAYS, event_problem, lift_for, report_lines, window_problem
from syncs.models import Sync


class Command(BaseCommand):
    help = (
        "Measured lift of an audience (or of one of its syncs): conversion and revenue per member of sent against "
        "held-out members, with 95 % intervals, and how many more members would settle it."
    )

    def add_arguments(self, parser):
        parser.add_argument("audience", help="The audience's key.")
        parser.add_argument("--sync", help="One sync of the audience: its own holdout (default: the audience, all its syncs).")
        parser.add_argument("--event", default=DEFAULT_EVENT, help=f"The conversion event (default: {DEFAULT_EVENT}).")
        parser.add_argument(
            "--window-days",
            type=int,
            default=DEFAULT_WINDOW_DAYS,
            help=f"Days after entry a conversion counts in (default: {DEFAULT_WINDOW_DAYS}).",
        )
        parser.add_argument(
            "--days", type=int, default=PERIOD_DAYS, help=f"Entries of this many days are counted (default: {PERIOD_DAYS})."
        )
        parser.add_argument("--now", help="ISO date-time to measure at (default: now).")

    def handle(self, *args, audience, sync, event, window_days, days, now, **options):
        found = Audience.objects.filter(key=audience).first()
        if found is None:
            raise CommandError(f"there is no audience {audience!r}")
        chosen = None
        if sync is not None:
            chosen = Sync.objects.filter(key=sync, audience=found).select_related("audience").first()
            if chosen is None:
                raise CommandError(f"there is no sync {sync!r} of the audience {found.key}")
        for problem in (window_problem(window_days), event_problem(event)):
            if problem:
                raise CommandError(problem)
        if not 1 <= days <= 3650:
            raise CommandError("--days must be from 1 to 3650")
        at = None
        if now:
            at = parse_datetime(now)
            if at is None or at.tzinfo is None:
                raise CommandError(f"--now {now!r} is not an ISO date-time with a zone, such as 2026-11-29T12:00:00Z")
        lift = lift_for(found, sync=chosen, event=event.strip(), window_days=window_days, now=at, period_days=days)
        label = f"{found.name} ({found.key})" + (f", sync {chosen.key}" if chosen else ", all its syncs")
        self.stdout.write("\n".join(report_lines(lift, label=label)))
