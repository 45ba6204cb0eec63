import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from audiences.roles import RETENTION_MANAGER, VIEWER

LOGIN_FILE = settings.VAR_DIR / "demo-login.txt"
USERS = (("admin", None), ("manager", RETENTION_MANAGER), ("viewer", VIEWER))


class Command(BaseCommand):
    help = "Create the demo logins (admin, manager, viewer) with one random password kept in var/ and print them."

    @transaction.atomic
    def handle(self, *args, **options):
        if LOGIN_FILE.exists():
            password = LOGIN_FILE.read_text().strip()
        else:
            password = secrets.token_urlsafe(12)
            LOGIN_FILE.write_text(password + "\n")
            LOGIN_FILE.chmod(0o600)
        user_model = get_user_model()
        for username, role in USERS:
            user, _ = user_model.objects.get_or_create(username=username)
            user.is_staff = True
            user.is_superuser = role is None
            user.set_password(password)
            user.save()
            if role:
                user.groups.set([Group.objects.get(name=role)])
        self.stdout.write(f"Login: admin / {password}   (also manager and viewer, same password)")
