"""Production settings come from the environment: with the environment the README documents,
`check --deploy` has nothing to say; pages carry a Content-Security-Policy that allows no
inline script or style (and the templates have none); a 403 writes one log line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User

ROOT = Path(__file__).resolve().parent.parent
GENERATED = {  # what the README tells a person to generate
    "SECRET_KEY": "prod-like-" + "k3y" * 20,
    "DOWNSTREAM_ENCRYPTION_KEY": Fernet.generate_key().decode(),
}


def documented_production_environment() -> dict[str, str]:
    """The KEY=value lines of the README's production block, generated secrets filled in."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Production\n.*?```sh\n(.*?)```", readme, re.S)
    assert block, "the README has no ## Production section with a ```sh block"
    env = {}
    for line in block.group(1).splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if value.startswith("<"):
            assert name in GENERATED, f"{name} has a placeholder the test cannot fill: {value}"
            value = GENERATED[name]
        env[name] = value
    return env


def run_with(env: dict, *args) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "DJANGO_", "DEBUG", "SECRET_KEY", "CSP_"))}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", "VAR_DIR": str(ROOT / "var"), **env},
    )


def settings_with(env: dict, *names) -> dict:
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {list(names)!r}}}))"
    )
    run = run_with(env, "-c", code)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_check_deploy_with_the_documented_production_environment_prints_no_warnings():
    env = documented_production_environment()
    assert env["DEBUG"] == "0"
    run = run_with(env, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "System check identified no issues (0 silenced)." in run.stdout, run.stdout + run.stderr


def test_the_production_environment_turns_on_hsts_the_ssl_redirect_and_the_proxy_header():
    values = settings_with(
        documented_production_environment(),
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
    )
    assert values == {
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
    }


def test_without_the_environment_a_local_run_keeps_plain_http():
    values = settings_with({"DEBUG": "1"}, "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER")
    assert values == {"SECURE_HSTS_SECONDS": 0, "SECURE_SSL_REDIRECT": False, "SECURE_PROXY_SSL_HEADER": None}


def test_a_proxy_header_setting_that_is_not_a_header_and_a_value_is_refused_at_start():
    run = run_with({"DEBUG": "1", "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"}, "-c", "import django; django.setup()")
    assert run.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER='X-Forwarded-Proto' is not a header and its value" in run.stderr


def test_env_example_documents_every_production_variable():
    example = (ROOT / ".env.example").read_text()
    for name in documented_production_environment():
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} is not in .env.example"


# --- Content-Security-Policy ------------------------------------------------------------------

INLINE_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[^>]*\sstyle\s*=", re.I)
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)(?![^>]*type=\"application/(ld\+)?json\")[^>]*>", re.I)


@pytest.mark.parametrize("template", sorted(p.relative_to(ROOT) for p in (ROOT / "templates").rglob("*.html")), ids=str)
def test_templates_have_no_inline_script_handler_or_style(template):
    text = (ROOT / template).read_text()
    assert not INLINE_HANDLER.search(text), INLINE_HANDLER.search(text).group(0)
    assert not STYLE_ATTRIBUTE.search(text), STYLE_ATTRIBUTE.search(text).group(0)
    assert not INLINE_SCRIPT.search(text), INLINE_SCRIPT.search(text).group(0)
    assert "<style" not in text


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/admin/login/", "/admin/", "/dashboard/audiences/new/", "/admin/audiences/audience/"])
def test_pages_carry_a_policy_that_allows_no_inline_script_or_style(client, admin_user, path):
    if path != "/admin/login/":
        client.force_login(admin_user)
    response = client.get(path)
    assert response.status_code == 200
    policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";") if part.strip())
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"


# --- a 403 is one line --------------------------------------------------------------------------


@pytest.fixture
def console():
    """What the console handler of config.settings.LOGGING writes."""
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "name", "") == "console")
    written = io.StringIO()
    previous = handler.setStream(written)
    yield written
    handler.setStream(previous)


@pytest.mark.django_db
def test_a_403_writes_one_log_line(client, console):
    client.force_login(User.objects.create_user("norole", password="pw-for-tests-1", is_staff=True))
    assert client.get("/dashboard/alerts/").status_code == 403
    lines = console.getvalue().splitlines()
    assert len(lines) == 1, console.getvalue()
    assert "WARNING django.request Forbidden (Permission denied): /dashboard/alerts/" in lines[0]


def test_a_server_error_still_logs_its_traceback(console):
    from config.log_filters import ClientErrorsOnOneLine

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "django.request", logging.ERROR, __file__, 1, "Internal Server Error: /x", None, sys.exc_info()
        )
    record.status_code = 500
    assert ClientErrorsOnOneLine().filter(record) and record.exc_info is not None
