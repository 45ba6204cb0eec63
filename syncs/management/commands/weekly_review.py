from django.conf import settings
from django.core.mail import send_mail
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from syncs.review import render_text, weekly_review


class Command(BaseCommand):
    help = "Print the weekly monitoring review (sizes, days at zero, lag, rejected rows, alerts, baselines); --email sends it."

    def add_arguments(self, parser):
        parser.add_argument("--week-ending", help="Last day of the week, YYYY-MM-DD (default: today).")
        parser.add_argument("--email", action="store_true", help="Send it to ALERT_EMAILS as well.")

    def handle(self, *args, week_ending, email, **options):
        try:
            report = weekly_review(week_ending=week_ending)
        except (ValueError, OverflowError):
            raise CommandError(f"--week-ending {week_ending!r} is not a date such as 2026-11-29")
        text = render_text(report)
        last_day = report.last_day.isoformat()
        link = settings.BASE_URL.rstrip("/") + reverse("dashboard:review") + f"?week={last_day}"
        self.stdout.write(text)
        if email:
            if not settings.ALERT_EMAILS:
                raise CommandError("--email: ALERT_EMAILS is empty; set it in the environment")
            send_mail(
                subject=f"Downstream weekly review, week ending {report.last_day:%d %b %Y}",
                message=f"{text}\nPrintable page: {link}\n",
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=settings.ALERT_EMAILS,
            )
            self.stdout.write(f"Sent to {', '.join(settings.ALERT_EMAILS)}.")
