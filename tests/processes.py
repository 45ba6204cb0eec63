"""Real processes for tests about the worker: a gunicorn web server and qcluster workers on the
test database (and, under `make test-postgres`, the Redis broker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def test_database_url() -> str:
    """The URL of the database the test run created (test_... on PostgreSQL)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


def process_env(**extra) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": getattr(settings, "REDIS_URL", "") or "",
        "SECRET_KEY": "worker-test-secret",
        "DOWNSTREAM_ENCRYPTION_KEY": settings.ENCRYPTION_KEY,
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "Q_WORKERS": "2",
        "CONN_MAX_AGE": "0",
        # the contract servers listen on 127.0.0.1, over http
        "DESTINATION_PRIVATE_HOSTS": "127.0.0.1,localhost",
        **extra,
    }


def clear_broker() -> None:
    """Tasks left in this run's Redis queue by an earlier test must not reach the next worker."""
    if getattr(settings, "REDIS_URL", ""):
        import redis

        client = redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(f"*{settings.Q_CLUSTER['name']}*"):
            client.delete(key)


def manage(*args, env=None, check=True):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env or process_env(), check=check, capture_output=True, text=True
    )


class Stack:
    def __init__(self):
        self.web_url = ""
        self.processes: dict[str, subprocess.Popen] = {}
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, env=None) -> subprocess.Popen:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env or process_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker, sig=signal.SIGKILL) -> None:
        """SIGKILL the whole process group: the cluster's sentinel, pusher, workers, monitor."""
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            pass
        worker.wait(timeout=30)
        self.workers.remove(worker)

    def stop(self) -> None:
        for worker in list(self.workers):
            # SIGTERM to the cluster's main process only: it stops its own children, whereas
            # children killed under it leave it waiting for them forever.
            worker.terminate()
        for worker in list(self.workers):
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(worker.pid, signal.SIGKILL)  # anything left of the group
            except ProcessLookupError:
                pass
            self.workers.remove(worker)
        for process in self.processes.values():
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def running_stack(*, web: bool = True, workers: int = 1, env_extra: dict | None = None, schedules: bool = True):
    """Web server and workers against the test database; schedules created first (unless a
    test is about what a worker does before any schedule has run)."""
    clear_broker()
    env = process_env(**(env_extra or {}))
    if schedules:
        manage("setup_schedules", env=env)
    stack = Stack()
    try:
        if web:
            port = free_port()
            stack.processes["web"] = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2", "--log-level", "warning"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for_port(port)
            stack.web_url = f"http://127.0.0.1:{port}"
        for _ in range(workers):
            stack.start_worker(env)
        yield stack
    finally:
        stack.stop()
        clear_broker()


def wait_until(predicate, timeout: float = 15, interval: float = 0.02):
    """Poll until predicate() is truthy; returns its value and the seconds it took."""
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(interval)
