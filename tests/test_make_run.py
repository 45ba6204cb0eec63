"""`make run`'s script, for real: web + worker on SQLite with demo data, URL and login printed."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


RESTORE_CTRL_C = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.worker
def test_run_serves_the_login_page_and_the_worker_shows_as_running(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PY": sys.executable,
        "PORT": str(port),
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "REDIS_URL": "",
        "SECRET_KEY": "make-run-test-secret",
        "DOWNSTREAM_ENCRYPTION_KEY": "GUTmjgfsx7nEwG3Rg2c5D6yyYeRc7Z2ZyAOgL8cP_7s=",
        "DEMO_ARGS": "--people 200",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    process = subprocess.Popen(
        # As typed in a terminal: a shell started in the background (nohup, `&`, some CI
        # runners) ignores SIGINT, which its children inherit and bash cannot undo, so Ctrl-C
        # is given back its default before the script starts.
        [sys.executable, "-c", RESTORE_CTRL_C, str(ROOT / "scripts" / "run")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = []
    # keep reading, or the worker's log fills the pipe and blocks it
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    try:
        url = login = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (url and login) and process.poll() is None:
            text = "".join(output)
            if match := re.search(r"running at (http://\S+?)/?\n", text):
                url = match.group(1)
            if match := re.search(r"Login: admin / (\S+)", text):
                login = match.group(1)
            time.sleep(0.2)
        assert url == f"http://127.0.0.1:{port}", "".join(output)
        assert login, "".join(output)

        session = requests.Session()
        page = session.get(url + "/admin/login/", timeout=10)
        assert page.status_code == 200 and "Password" in page.text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        landed = session.post(
            url + "/admin/login/?next=/admin/",
            data={"username": "admin", "password": login, "csrfmiddlewaretoken": token},
            headers={"Referer": url + "/admin/login/"},
            timeout=10,
        )
        assert landed.url.rstrip("/").endswith("/admin"), landed.url

        running = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not running:
            running = "Worker running" in session.get(url + "/admin/", timeout=10).text
            time.sleep(0.5)
        assert running, "the dashboard never showed the worker as running"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("Ctrl-C did not stop web server and worker:\n" + "".join(output[-30:]))
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/admin/login/", timeout=2)
