from django.core.management.base import BaseCommand, CommandError

from audiences.models import Audience, Person


class Command(BaseCommand):
    help = "Print the current members' customer ids, one per line."

    def add_arguments(self, parser):
        parser.add_argument("key")

    def handle(self, *args, key, **options):
        audience = Audience.objects.filter(key=key).first()
        if audience is None:
            raise CommandError(f"no audience with key {key!r}")
        ids = (
            Person.objects.filter(memberships__audience=audience, memberships__exited_at__isnull=True)
            .order_by("customer_id")
            .values_list("customer_id", flat=True)
        )
        for customer_id in ids.iterator(chunk_size=5000):
            self.stdout.write(customer_id)
