from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audiences.ingest import source_create, source_rotate_key
from audiences.models import Source


class Command(BaseCommand):
    help = "Create an ingest source and print its new write key (the last line of output)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Source name; also the site id for the Track API.")
        parser.add_argument(
            "--rotate", action="store_true", help="Issue a new key for an existing source (the old key stops working)."
        )

    def handle(self, *args, name, rotate, **options):
        existing = Source.objects.filter(name=name).first()
        if existing and not rotate:
            raise CommandError(f"source {name!r} already exists; use --rotate to issue it a new write key")
        if rotate and not existing:
            raise CommandError(f"there is no source {name!r} to rotate; leave out --rotate to create it")
        if existing:
            key = source_rotate_key(source=existing)
        else:
            try:
                _, key = source_create(name=name)
            except ValidationError as exc:
                raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items()))
        self.stdout.write(f"Source {name}: write key (shown once, stored hashed). Use it as the Basic auth")
        self.stdout.write(f"user name for /ingest/v1/*, or as the API key with site id {name!r} for /track/api/v1/*.")
        self.stdout.write(key)
