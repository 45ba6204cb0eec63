import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from audiences.roles import RETENTION_MANAGER, VIEWER

LOGINS_FILE_NAME = "demo-logins.txt"
USERS = (("admin", None), ("manager", RETENTION_MANAGER), ("viewer", VIEWER))


def demo_passwords(path) -> dict[str, str]:
    """One random password per demo login, kept (readable by its owner only) so that the next
    `make run` prints the same ones; a viewer never learns the superuser's."""
    kept = {}
    if path.exists():
        kept = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    passwords = {username: kept.get(username) or secrets.token_urlsafe(12) for username, _ in USERS}
    if passwords != kept:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.writelines(f"{username} {password}\n" for username, password in passwords.items())
    os.chmod(path, 0o600)
    return passwords


class Command(BaseCommand):
    help = "Create the demo logins (admin, manager, viewer), each with its own random password kept in var/, and print them."

    @transaction.atomic
    def handle(self, *args, **options):
        passwords = demo_passwords(settings.VAR_DIR / LOGINS_FILE_NAME)
        user_model = get_user_model()
        for username, role in USERS:
            user, _ = user_model.objects.get_or_create(username=username)
            user.is_staff = True
            user.is_superuser = role is None
            user.set_password(passwords[username])
            user.save()
            if role:
                user.groups.set([Group.objects.get(name=role)])
            self.stdout.write(f"Login: {username} / {passwords[username]}   ({role or 'superuser'})")
