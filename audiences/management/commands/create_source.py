from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audiences.ingest import source_create, source_rotate_key, source_set_scopes
from audiences.models import SCOPES, TRACK, Source


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())


class Command(BaseCommand):
    help = "Create an ingest source and print its new write key (the last line of output)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Source name; also the site id for the Track API.")
        parser.add_argument(
            "--rotate", action="store_true", help="Issue a new key for an existing source (the old key stops working)."
        )
        parser.add_argument(
            "--scope",
            help=f"Comma list of what the key may do, from {', '.join(SCOPES)} (default: track, the browser-safe key; "
            "erase and outcomes make a server key). With --rotate, changes the scopes too.",
        )

    def handle(self, *args, name, rotate, scope, **options):
        scopes = None if scope is None else [s.strip() for s in scope.split(",") if s.strip()]
        existing = Source.objects.filter(name=name).first()
        if existing and not rotate:
            raise CommandError(f"source {name!r} already exists; use --rotate to issue it a new write key")
        if rotate and not existing:
            raise CommandError(f"there is no source {name!r} to rotate; leave out --rotate to create it")
        try:
            if existing:
                if scopes is not None:
                    source_set_scopes(source=existing, scopes=scopes)
                key = source_rotate_key(source=existing)
                source = existing
            else:
                source, key = source_create(name=name, scopes=[TRACK] if scopes is None else scopes)
        except ValidationError as exc:
            raise CommandError(_problems(exc))
        kind = "a browser key" if source.scopes == [TRACK] else "a server key: keep it off browsers and apps"
        self.stdout.write(f"Source {name}: write key with scopes {', '.join(source.scopes)} ({kind}).")
        self.stdout.write("Shown once, stored hashed. Use it as the Basic auth user name for /ingest/v1/*, or as the")
        self.stdout.write(f"API key with site id {name!r} for /track/api/v1/*.")
        self.stdout.write(key)
