from django.core.management.base import BaseCommand, CommandError

from syncs.destinations.meta.reconcile import ReconcileRefused, reconcile
from syncs.destinations.meta.transport import MAX_BATCH
from syncs.models import Sync


class Command(BaseCommand):
    help = (
        "Upload every person Downstream has in a Meta sync's audience again (usersreplace), so that Meta drops "
        "everyone else: the weekly repair of drift, now."
    )

    def add_arguments(self, parser):
        parser.add_argument("sync", help="The sync's key.")
        parser.add_argument("--batch-size", type=int, default=MAX_BATCH, help=f"People a request (at most {MAX_BATCH:,}).")

    def handle(self, *args, sync, batch_size, **options):
        found = Sync.objects.select_related("audience", "destination").filter(key=sync).first()
        if found is None:
            raise CommandError(f"there is no sync {sync!r}")
        try:
            run = reconcile(found, batch_size=batch_size)
        except ReconcileRefused as exc:
            raise CommandError(str(exc)) from None
        details = run.details or {}
        line = (
            f"{found.key}: {run.get_status_display().lower()}: {run.sent:,} of {run.planned:,} people in "
            f"{details.get('batches', 0)} batch(es), {run.requests} request(s), {run.skipped:,} without an identifier"
        )
        if "num_invalid_entries" in details:
            line += f"; Meta could not read {details['num_invalid_entries']:,}"
        self.stdout.write(line)
        if run.status == run.FAILED:
            raise CommandError(run.error)
