"""`make test-future` really moves the clock: the suite it runs is the suite a year from now."""

import os
import tempfile
import time

import pytest
from django.utils import timezone

DAYS = os.environ.get("DOWNSTREAM_CLOCK_AHEAD_DAYS")


@pytest.mark.skipif(not DAYS, reason="only under make test-future (DOWNSTREAM_CLOCK_AHEAD_DAYS)")
def test_the_wall_clock_runs_ahead_of_the_kernel_s():
    # a new file's time comes from the kernel, which time-machine does not move
    with tempfile.NamedTemporaryFile() as probe:
        kernel_now = os.stat(probe.name).st_mtime
    ahead_days = (timezone.now().timestamp() - kernel_now) / 86400
    assert abs(ahead_days - float(DAYS)) < 0.01
    assert abs((time.time() - kernel_now) / 86400 - float(DAYS)) < 0.01
