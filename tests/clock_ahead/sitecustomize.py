"""`make test-future`: every Python process of the run (pytest, and the qcluster, gunicorn and
contract servers it starts, which inherit PYTHONPATH) lives DOWNSTREAM_CLOCK_AHEAD_DAYS days
ahead, through time-machine: wall clocks move, the monotonic clock (timeouts, waits) does not."""

import os

_days = os.environ.get("DOWNSTREAM_CLOCK_AHEAD_DAYS")
if _days:
    import datetime

    import time_machine

    _travel = time_machine.travel(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=float(_days)), tick=True)
    _travel.start()
