"""Shared plumbing for the benchmarks: fresh databases, free ports, the machine line."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.processes import free_port, wait_for_port  # noqa: E402,F401  (one place for both)


def machine_line() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )


def django_env(database_url: str, **extra) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": extra.pop("redis_url", ""),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "benchmark-secret"),
        "DOWNSTREAM_ENCRYPTION_KEY": os.environ.get(
            "DOWNSTREAM_ENCRYPTION_KEY", "GUTmjgfsx7nEwG3Rg2c5D6yyYeRc7Z2ZyAOgL8cP_7s="
        ),
        "DEBUG": "0",
        # the fake LiveLike and webhook receivers listen on 127.0.0.1, over http
        "DESTINATION_PRIVATE_HOSTS": "127.0.0.1,localhost",
        **extra,
    }


def reset_database(database_url: str, env: dict) -> None:
    """Drop and recreate the benchmark database, then migrate it."""
    parsed = urlparse(database_url)
    if parsed.scheme.startswith("postgres"):
        name = parsed.path.lstrip("/")
        admin = parsed._replace(path="/postgres").geturl()
        for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
            subprocess.run(["psql", admin, "-qc", sql], check=True, capture_output=True)
    else:
        path = Path(parsed.path)
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
