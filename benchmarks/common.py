"""Shared plumbing for the benchmarks: fresh databases, free ports, the machine line."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.processes import free_port, wait_for_port  # noqa: F401  (one place for both)


def machine_line() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}; one core runs {core_speed():.1f} M steps/s of a Python loop"
    )


def core_speed(steps: int = 2_000_000) -> float:
    """Millions of steps a second of a plain Python loop, the best of three: one yardstick of the
    cores the figures ran on. It does not tell all: on 2026-12-03 it read 13-16 while ingest's
    CPU per event, in gunicorn and in PostgreSQL alike, was 2.7 times the day before's."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for step in range(steps):
            total += step
        best = min(best, time.perf_counter() - started)
    return steps / best / 1e6


def django_env(database_url: str, **extra) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": extra.pop("redis_url", ""),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "benchmark-secret"),
        "DOWNSTREAM_ENCRYPTION_KEY": os.environ.get("DOWNSTREAM_ENCRYPTION_KEY", "GUTmjgfsx7nEwG3Rg2c5D6yyYeRc7Z2ZyAOgL8cP_7s="),
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


def load_line() -> str:
    """Other work on the machine shows in every figure here: say how busy it was."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def manage(env, *args) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


class Processes:
    """A LiveLike contract server, gunicorn and one qcluster, each its own process, stopped in
    the right way."""

    def __init__(self):
        self.server = self.web = self.worker = None

    def start_livelike(self, token: str, client_id: str, *flags: str) -> str:
        return self.start_server("livelike", "--token", token, "--client-id", client_id, *flags)

    def start_server(self, kind: str, *flags: str) -> str:
        """A contract server (`tests/contract_servers/<kind>.py`) in its own process; its URL."""
        self.server = subprocess.Popen(
            [sys.executable, "-m", f"tests.contract_servers.{kind}", "--port", "0", *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.server.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the {kind} contract server said {line!r}")
        return line.removeprefix("listening on ")

    def start_web(self, env, port: int, workers: int, *, threads: int = 1, flags: tuple[str, ...] = ()) -> None:
        """gunicorn as deployed (its config file), no access log; `flags` go on its command line."""
        worker_class = ["--worker-class", "gthread", "--threads", str(threads)] if threads > 1 else ["--worker-class", "sync"]
        self.web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "config/gunicorn.conf.py",
                "config.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                str(workers),
                *worker_class,
                *flags,
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**env, "GUNICORN_ACCESS_LOG": ""},
        )
        wait_for_port(port)

    def start_worker(self, env) -> None:
        self.worker = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill_worker(self) -> None:
        """SIGKILL the cluster's whole process group: sentinel, pusher, workers, monitor."""
        try:
            os.killpg(self.worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.worker.wait()

    def stop(self) -> None:
        if self.worker is not None:
            # SIGTERM to the cluster's main process only: it stops its own children; children
            # killed first leave it waiting for them forever.
            self.worker.terminate()
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print("  (qcluster did not stop within 30 s; killing its process group)")
            try:
                os.killpg(self.worker.pid, signal.SIGKILL)  # whatever is left of the group
            except ProcessLookupError:
                pass
            self.worker.wait()
        for process in (self.web, self.server):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# --- autovacuum, where the server has it off -------------------------------------------------

# the tables autovacuum would pick now: more dead rows than its threshold, read from each
# table's own settings (a migration sets some) or the server's defaults
OVER_THRESHOLD = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.n_dead_tup > coalesce((SELECT split_part(o, '=', 2)::float FROM unnest(c.reloptions) o
                               WHERE o LIKE 'autovacuum_vacuum_threshold=%%'), current_setting('autovacuum_vacuum_threshold')::float)
                   + coalesce((SELECT split_part(o, '=', 2)::float FROM unnest(c.reloptions) o
                               WHERE o LIKE 'autovacuum_vacuum_scale_factor=%%'), current_setting('autovacuum_vacuum_scale_factor')::float)
                     * s.n_live_tup
"""


def autovacuum_is_off(cursor) -> bool:
    cursor.execute("SHOW autovacuum")
    return cursor.fetchone()[0] == "off"


def vacuum_as_autovacuum_would(cursor) -> list[str]:
    """VACUUM (ANALYZE) each table autovacuum's thresholds pick now; returns their names."""
    cursor.execute(OVER_THRESHOLD)
    tables = [name for (name,) in cursor.fetchall()]
    for name in tables:
        cursor.execute(f'VACUUM (ANALYZE) "{name}"')
    return tables


class AutovacuumStandIn:
    """While the server runs with autovacuum off (this machine's PostgreSQL does), a thread
    on a connection of its own does what autovacuum would: every second, VACUUM (ANALYZE) of
    each table over its threshold. Nothing when autovacuum is on."""

    def __init__(self, database_url: str):
        import threading

        import psycopg

        self.connection = psycopg.connect(database_url, autocommit=True)
        with self.connection.cursor() as cursor:
            self.active = autovacuum_is_off(cursor)
        self.vacuums: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="autovacuum-stand-in")

    def _run(self):
        while not self.stopping.wait(1.0):
            with self.connection.cursor() as cursor:
                self.vacuums += vacuum_as_autovacuum_would(cursor)

    def __enter__(self):
        if self.active:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        if self.active:
            self.thread.join()
        self.connection.close()

    def line(self) -> str:
        if not self.active:
            return "autovacuum on"
        counts = {name: self.vacuums.count(name) for name in dict.fromkeys(self.vacuums)}
        done = ", ".join(f"{name} {n}x" for name, n in counts.items()) or "none needed"
        return f"autovacuum off on this server: stood in for at its thresholds, vacuums {done}"
