"""Secrets stay where they belong: `.env` readable by its owner only, a new write key shown on the
page that made it and nowhere else (no cookie, no message, no session), no key in the web
server's access log, and each demo login with a password of its own."""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import User
from django.core.management import call_command

from audiences.ingest import source_authenticate, source_create
from audiences.models import Source

ROOT = Path(__file__).resolve().parent.parent
KEY = re.compile(r"ds_[A-Za-z0-9_-]{20,}")
GUNICORN_CONF = ROOT / "config" / "gunicorn.conf.py"


# --- .env -----------------------------------------------------------------------------------


def run_script_in(folder: Path) -> subprocess.CompletedProcess:
    """scripts/run from a copy of the project's skeleton: it writes .env, then stops at the first
    manage.py command (there is no manage.py in the copy)."""
    (folder / "scripts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "scripts" / "run", folder / "scripts" / "run")
    shutil.copy(ROOT / ".env.example", folder / ".env.example")
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DOWNSTREAM_ENCRYPTION_KEY")}
    return subprocess.run(
        ["bash", "-c", "umask 022 && exec bash scripts/run"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PY": sys.executable},
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_run_writes_env_readable_by_its_owner_only(tmp_path):
    run = run_script_in(tmp_path)
    env_file = tmp_path / ".env"
    assert env_file.exists(), run.stdout + run.stderr
    assert mode(env_file) == 0o600
    secret = re.search(r"^SECRET_KEY=(.+)$", env_file.read_text(), re.M).group(1)
    assert secret != "change-me" and len(secret) > 40


def test_make_run_closes_an_env_file_others_could_read(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET_KEY=kept-as-it-is\n")
    env_file.chmod(0o644)
    run_script_in(tmp_path)
    assert mode(env_file) == 0o600
    assert env_file.read_text() == "SECRET_KEY=kept-as-it-is\n"


# --- the shown-once write key ---------------------------------------------------------------


def no_key_left_behind(client, response, key: str) -> None:
    for cookie in response.cookies.values():
        assert key not in cookie.value, f"the key is in the {cookie.key} cookie"
    assert "messages" not in response.cookies
    session = client.session
    assert all(key not in str(value) for value in session.values()), "the key is in the session"
    assert key not in str(session.get("_messages", ""))
    # the next page shows no trace of it either
    assert key.encode() not in client.get("/admin/audiences/source/").content


@pytest.mark.django_db
def test_a_new_source_shows_its_key_on_the_page_that_made_it_and_nowhere_else(admin_client):
    response = admin_client.post("/admin/audiences/source/add/", {"name": "mobile", "scopes": ["track"]})
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0") and "no-store" in response["Cache-Control"]
    keys = KEY.findall(response.content.decode())
    assert len(set(keys)) == 1
    key = keys[0]
    assert source_authenticate(write_key=key) == Source.objects.get(name="mobile")
    assert "shown once" in response.content.decode()
    no_key_left_behind(admin_client, response, key)


@pytest.mark.django_db
def test_rotating_keys_shows_the_new_keys_on_the_answering_page_and_nowhere_else(admin_client):
    web, old_web = source_create(name="web")
    app, _ = source_create(name="app")
    response = admin_client.post(
        "/admin/audiences/source/",
        {"action": "rotate_keys", "index": "0", "_selected_action": [str(web.pk), str(app.pk)]},
    )
    assert response.status_code == 200
    keys = set(KEY.findall(response.content.decode()))
    assert len(keys) == 2
    assert {source_authenticate(write_key=k).name for k in keys} == {"web", "app"}
    assert source_authenticate(write_key=old_web) is None
    for key in keys:
        no_key_left_behind(admin_client, response, key)


# --- the access log -------------------------------------------------------------------------


def gunicorn_config() -> dict:
    namespace: dict = {}
    exec(GUNICORN_CONF.read_text(), namespace)  # noqa: S102 - our own config file
    return namespace


def test_the_access_log_format_has_no_user_name():
    # %(u)s is the HTTP Basic user name, which on the ingest API is the write key
    assert "%(u)s" not in gunicorn_config()["access_log_format"]


def test_every_documented_gunicorn_command_uses_the_config_file():
    commands = re.findall(r"`(gunicorn [^`]*)`", (ROOT / "README.md").read_text())
    assert commands, "the README documents no gunicorn command"
    for command in commands:
        assert command.startswith("gunicorn -c config/gunicorn.conf.py "), command
    started = 0
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        text = re.sub(r",\s+", ", ", script.read_text())  # a command list as one line, however it is laid out
        assert text.count('"-m", "gunicorn"') == text.count('"-m", "gunicorn", "-c", "config/gunicorn.conf.py"'), script
        started += text.count('"-m", "gunicorn"')
    assert started, "no benchmark starts gunicorn any more: this test looks in the wrong place"


@pytest.mark.worker
def test_a_request_with_a_write_key_leaves_no_key_in_the_access_log(transactional_db):
    from tests.processes import free_port, process_env, wait_for_port

    _, key = source_create(name="web")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1"],
        cwd=ROOT,
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port)
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        answer = requests.post(
            f"http://127.0.0.1:{port}/ingest/v1/track",
            timeout=10,
            headers={"Authorization": auth},
            json={"userId": "cus_1", "event": "Product Viewed", "messageId": "m-1"},
        )
        assert answer.status_code == 200, answer.text
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "POST /ingest/v1/track" in output and " 200 " in output, output  # the request was logged
    assert key not in output
    assert key[3:20] not in output


# --- the demo logins ------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_demo_login_gets_its_own_password_printed_once_per_run(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    out = StringIO()
    call_command("demo_login", stdout=out)
    logins = dict(re.findall(r"Login: (\w+) / (\S+)", out.getvalue()))
    assert set(logins) == {"admin", "manager", "viewer"}
    assert len(set(logins.values())) == 3
    for username, password in logins.items():
        user = User.objects.get(username=username)
        assert user.check_password(password)
        assert not any(user.check_password(other) for name, other in logins.items() if name != username)
    assert User.objects.get(username="admin").is_superuser and not User.objects.get(username="viewer").is_superuser
    kept = next(tmp_path.iterdir())
    assert mode(kept) == 0o600
    again = StringIO()
    call_command("demo_login", stdout=again)
    assert dict(re.findall(r"Login: (\w+) / (\S+)", again.getvalue())) == logins  # the same logins next time
