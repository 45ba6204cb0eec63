import os
from datetime import datetime
from io import StringIO

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audiences.config import apply
from audiences.demo import DEMO_CONFIG_FILES, DEMO_EXTRAS, DEMO_SOURCE, backfill_size_history, live_feed, load_demo
from audiences.evaluation import evaluate_all
from audiences.ingest import source_rotate_key
from audiences.models import Person
from audiences.preview import refresh_coverage
from audiences.services import audience_save


class Command(BaseCommand):
    help = (
        "Build the demo skincare store: people with realistic attributes and 30 days of "
        "browse → cart → checkout → purchase funnels (the same --seed and --anchor give the same "
        "data). --live then keeps sending events through the ingest API."
    )

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--people", type=int, default=5000)
        parser.add_argument("--days", type=int, default=30)
        parser.add_argument("--anchor", help="ISO date-time the data ends at (default: now).")
        parser.add_argument("--force", action="store_true", help="Load even if people already exist.")
        parser.add_argument("--live", action="store_true", help="After loading, keep sending events.")
        parser.add_argument("--url", default=settings.BASE_URL, help="Where --live sends (default: BASE_URL).")
        parser.add_argument("--rate", type=float, default=1.0, help="--live funnels per second (default 1).")

    def handle(self, *args, seed, people, days, anchor, force, live, url, rate, **options):
        anchor_at = self._anchor(anchor)
        if Person.objects.exists() and not force:
            self.stdout.write("Demo data already loaded (people exist); use --force to load again.")
        else:
            summary = load_demo(
                seed=seed,
                anchor=anchor_at,
                people=people,
                days=days,
                progress=lambda done, total: self.stderr.write(f"  events {done:,}/{total:,}"),
            )
            self.stdout.write(
                f"Demo store loaded: {summary.people:,} people, {summary.events:,} events up to "
                f"{summary.anchor:%Y-%m-%d %H:%M} UTC (seed {seed})."
            )
        self._after_load()
        if live:
            self._live(url=url, seed=seed, people=people, rate=rate)

    def _after_load(self):
        """The playbook's conventions, policies and audiences, applied like any config file."""
        from audiences.models import Audience

        if Audience.objects.exists():
            return
        # the audiences name their owner, a demo login
        call_command("demo_login", stdout=StringIO())
        # the demo's LiveLike destination runs dry; its token only has to exist
        os.environ.setdefault("LIVELIKE_PRODUCER_TOKEN", "demo-token-not-a-real-one")
        for path in DEMO_CONFIG_FILES:
            apply(str(path))
        for audience in Audience.objects.all():
            owner = "admin" if audience.cadence != Audience.REALTIME else "manager"
            audience_save(instance=audience, data={"owner": owner})
        for extra in DEMO_EXTRAS:
            extra(log=self.stdout.write)
        for evaluation in evaluate_all():
            self.stdout.write(f"  {evaluation.audience_key}: {evaluation.size:,} members")
        backfill_size_history(days=7)
        for audience in Audience.objects.all():
            refresh_coverage(audience)

    def _anchor(self, text):
        if not text:
            return timezone.now()
        parsed = parse_datetime(text)
        if parsed is None:
            raise CommandError(f"--anchor {text!r} is not an ISO date-time such as 2026-11-29T12:00:00Z")
        return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.utc)

    def _live(self, *, url, seed, people, rate):
        from audiences.models import Source

        with transaction.atomic():
            key = source_rotate_key(source=Source.objects.get(name=DEMO_SOURCE))
        self.stdout.write(f"Sending live events to {url} (Ctrl-C stops).")
        try:
            live_feed(
                url=url,
                write_key=key,
                seed=seed + int(datetime.now().timestamp()),
                people=people,
                rate=rate,
                log=self.stdout.write,
            )
        except KeyboardInterrupt:
            self.stdout.write("Live feed stopped.")
