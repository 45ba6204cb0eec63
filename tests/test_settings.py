"""Settings that cannot work stop the process at start with a message naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1", **env},
    )


def test_an_unknown_phone_region_is_refused_at_start():
    run = start(PHONE_DEFAULT_REGION="XX")
    assert run.returncode != 0
    assert "PHONE_DEFAULT_REGION='XX' is not a region code such as US, GB, DE." in run.stderr


def test_a_region_in_lower_case_is_accepted():
    run = start(PHONE_DEFAULT_REGION="gb")
    assert run.returncode == 0, run.stderr
