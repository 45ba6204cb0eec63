from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audiences.config import ConfigError, apply


class Command(BaseCommand):
    help = (
        "Apply a configuration file (naming conventions, identifier policies, priority groups, "
        "audiences, destinations, syncs). --check prints the plan and writes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--check", action="store_true", help="Validate and print the plan; write nothing.")
        parser.add_argument("--actor", help="Username recorded in the setting history.")

    def handle(self, *args, file, check, actor, **options):
        user = None
        if actor:
            user = get_user_model().objects.filter(username=actor).first()
            if not user:
                raise CommandError(f"--actor: there is no user {actor!r}")
        try:
            changes = apply(file, check=check, actor=user)
        except ConfigError as exc:
            raise CommandError("\n".join(exc.messages))
        for change in changes:
            self.stdout.write(str(change))
        verb = "would change" if check else "changed"
        summary = f"{len(changes)} object(s) {verb}" if changes else "no changes: the database matches the file"
        self.stdout.write(summary + (" (check only; nothing written)" if check and changes else ""))
