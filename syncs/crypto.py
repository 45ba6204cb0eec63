"""Credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key from the environment.

DOWNSTREAM_ENCRYPTION_KEY may list several keys, comma-separated, newest first: values are
encrypted with the first and decrypted with any, so a key can be rotated without downtime.
"""

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CredentialsUnreadable(Exception):
    pass


def _fernet() -> MultiFernet:
    keys = [k.strip() for k in (settings.ENCRYPTION_KEY or "").split(",") if k.strip()]
    if not keys:
        raise ImproperlyConfigured(
            "DOWNSTREAM_ENCRYPTION_KEY is not set; credentials cannot be stored. Generate one with "
            "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"DOWNSTREAM_ENCRYPTION_KEY is not a Fernet key: {exc}")


def encrypt(values: dict) -> str:
    return _fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def decrypt(token: str) -> dict:
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise CredentialsUnreadable(
            "stored credentials cannot be decrypted with DOWNSTREAM_ENCRYPTION_KEY (was the key changed?); enter them again"
        )
