from django.core.management.base import BaseCommand

from audiences.config import export_yaml


class Command(BaseCommand):
    help = "Print the configuration (conventions, policies, groups, audiences, destinations, syncs) as YAML."

    def add_arguments(self, parser):
        parser.add_argument("--output", "-o", help="Write to this file instead of standard output.")

    def handle(self, *args, output, **options):
        text = export_yaml()
        if output:
            with open(output, "w", encoding="utf-8") as handle:
                handle.write(text)
            self.stderr.write(f"Wrote {output}")
        else:
            self.stdout.write(text, ending="")
