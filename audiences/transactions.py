"""Running a transaction again when PostgreSQL broke a deadlock by aborting it.

Transactions that lock the same rows take them in one order (audience rows in dependency
order, see `dependencies.dependency_order`), so deadlocks should not happen; when one does (rows
no order covers, such as a person's queue entry and their memberships), the victim is rolled
back whole and can simply run again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE for deadlock_detected
DEADLOCK_ATTEMPTS = 3


def is_deadlock(exc: BaseException) -> bool:
    """Django wraps psycopg's DeadlockDetected in OperationalError (a DatabaseError), keeping
    the driver's error as the cause."""
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == DEADLOCK_DETECTED or getattr(cause, "pgcode", None) == DEADLOCK_DETECTED


def atomic_retrying_deadlocks(work: Callable[[], T], *, attempts: int = DEADLOCK_ATTEMPTS, pause_s: float = 0.05) -> T:
    """`work()` in a transaction (a savepoint inside an outer one), run again after a short,
    jittered pause when it was a deadlock's victim; any other error, or a deadlock on the last
    attempt, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                return work()
        except DatabaseError as exc:
            if attempt == attempts or not is_deadlock(exc):
                raise
            log.warning("deadlock (attempt %d of %d), running the transaction again: %s", attempt, attempts, exc)
            time.sleep(pause_s * attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")
