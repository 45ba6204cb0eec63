"""Worker entry points. Tasks take ids, are idempotent, and call one service each."""

import logging
import secrets
import time
from datetime import timedelta

from django.core.cache import cache
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from django_q.conf import Conf
from django_q.tasks import async_task

from .evaluation import evaluate_due, evaluate_expired, evaluate_pending
from .expiry import next_due_at

logger = logging.getLogger(__name__)

# The expiry waiter: one task at a time (a lease in the cache, renewed as it goes) holds a
# worker while a realtime window is about to end, and looks at the next due time at least every
# EXPIRY_POLL_S, so that exits land within seconds of the window's end. The lease's value is the
# waiter's token and the time it was last renewed.
EXPIRY_LEASE = "audiences:expiry-waiter"
EXPIRY_LEASE_S = 10
EXPIRY_POLL_S = 1.0
# A waiter renews its lease after every look (at least every EXPIRY_POLL_S, plus what it
# evaluated): a lease left as it is this long belongs to a waiter that died with its worker.
EXPIRY_STALE_S = 2.5
# A time further off than this: the waiter lets its worker go, and a tick starts one in time
# (the once-a-minute ticks come up to ~90 s apart).
EXPIRY_HORIZON = timedelta(minutes=2)
# Then it hands over to a fresh task, so that tasks queued behind it get a worker in turn.
EXPIRY_TURN_S = 10.0


# A realtime pass the database fails (a cut connection: a failover, a restarted server) is tried
# again this many times in all, a second apart, rather than leaving the people it had to evaluate
# queued until the next wake-up (the next request's, or the minute's tick in a quiet hour).
PENDING_ATTEMPTS = 5


def evaluate_pending_people(*, sleep=time.sleep):
    """Realtime audiences for the people ingest queued; a burst coalesces into one pass."""
    for attempt in range(1, PENDING_ATTEMPTS + 1):
        try:
            done = evaluate_pending()
            wake_expiry_waiter()
            return done
        except (OperationalError, InterfaceError) as error:
            if attempt == PENDING_ATTEMPTS:
                raise
            _database_failed("realtime evaluation", error)
            sleep(EXPIRY_POLL_S)


def _database_failed(what: str, error) -> None:
    logger.warning("%s: the database failed (%s); trying again in %.0f s", what, error, EXPIRY_POLL_S)
    if not connection.in_atomic_block:  # a new connection next time (a caller's transaction is the caller's)
        connection.close()


def evaluate_due_audiences():
    done = len(evaluate_due())
    wake_expiry_waiter()
    return done


def wake_expiry_waiter() -> bool:
    """Start the expiry waiter when a time comes within the horizon and none runs. Not under
    `Q_CLUSTER["sync"]`, where tasks run in-process (tests): a waiter would hold the caller."""
    if Conf.SYNC or cache.get(EXPIRY_LEASE):
        return False
    due = next_due_at()
    if due is None or due > timezone.now() + EXPIRY_HORIZON:
        return False
    async_task("audiences.tasks.evaluate_expiring_people", task_name="evaluate expiring people")
    return True


def evaluate_expiring_people(token: str = "", *, takeover: bool = False, sleep=time.sleep) -> int:
    """The expiry waiter: evaluate the people whose time has come as it comes (and those ingest
    queued meanwhile, should the other workers be busy), sleeping until the next due time;
    stop when none is within the horizon. `token` is the lease handed over by the last turn;
    `takeover`: started by a worker that has just started, which takes the lease over if it
    is not renewed (the waiter died with the worker or the cluster it ran in)."""
    token = token or secrets.token_hex(8)
    if not _take_lease(token, takeover, sleep):
        return 0  # another waiter runs
    done, turn_ends = 0, time.monotonic() + EXPIRY_TURN_S
    while True:
        try:
            done += evaluate_pending() + evaluate_expired()
            if _holder(cache.get(EXPIRY_LEASE)) not in (token, None):
                return done  # taken over while this one was slow to renew it: the other goes on
            cache.set(EXPIRY_LEASE, _lease(token), EXPIRY_LEASE_S)
            due, now = next_due_at(), timezone.now()
        except (OperationalError, InterfaceError) as error:
            # the connection was cut (a failover, a restarted server) or the database is away:
            # look again with a new connection in a moment, lease kept, instead of failing the
            # task and leaving the exits to the scheduler's next tick
            _database_failed("expiry waiter", error)
            if time.monotonic() >= turn_ends:
                _let_go(token)  # the next wake-up (ingest, the minute's tick) starts another
                raise
            sleep(EXPIRY_POLL_S)
            continue
        if due is None or due > now + EXPIRY_HORIZON:
            cache.delete(EXPIRY_LEASE)
            return done
        if time.monotonic() >= turn_ends:
            async_task("audiences.tasks.evaluate_expiring_people", token, task_name="evaluate expiring people")
            return done
        sleep(min(max((due - now).total_seconds(), 0.0), EXPIRY_POLL_S))


def _lease(token: str) -> str:
    return f"{token}:{time.time():.6f}"


def _let_go(token: str) -> None:
    try:
        if _holder(cache.get(EXPIRY_LEASE)) == token:
            cache.delete(EXPIRY_LEASE)
    except (OperationalError, InterfaceError):
        pass  # a cache in the database that is away: the lease lapses by itself


def _holder(lease: str | None) -> str | None:
    return lease.split(":", 1)[0] if lease else None


def _stale(lease: str | None) -> bool:
    """Whether a lease was last renewed EXPIRY_STALE_S ago or more. A waiter on a host whose
    clock is behind looks stale early: a worker that starts takes over from it, and it stops
    at its next look (one handover, no exit missed)."""
    try:
        renewed = float(lease.split(":", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return False  # no time in it: watched for EXPIRY_STALE_S
    return time.time() - renewed >= EXPIRY_STALE_S


def _take_lease(token: str, takeover: bool, sleep) -> bool:
    """Whether this task holds the waiter's lease: it was handed over, or there was none. With
    `takeover`, a lease held by another is watched until it is renewed (its waiter lives: False)
    or until EXPIRY_STALE_S have passed since it was, by the time it holds (its waiter died:
    taken over), and for EXPIRY_STALE_S at most: a cluster started again at once takes over
    when the dead waiter's lease is 2.5 s old, not 2.5 s after it starts."""
    held = cache.get(EXPIRY_LEASE)
    if _holder(held) == token or cache.add(EXPIRY_LEASE, _lease(token), EXPIRY_LEASE_S):
        return True
    if not takeover:
        return False
    watched = 0.0
    while watched < EXPIRY_STALE_S and not _stale(held):
        sleep(EXPIRY_POLL_S / 4)
        watched += EXPIRY_POLL_S / 4
        seen = cache.get(EXPIRY_LEASE)
        if seen is None:  # let go (or lapsed) meanwhile
            return cache.add(EXPIRY_LEASE, _lease(token), EXPIRY_LEASE_S)
        if seen != held:
            return False
    cache.set(EXPIRY_LEASE, _lease(token), EXPIRY_LEASE_S)
    return True


def enqueue_pending_evaluation(sender=None, person_ids=(), **kwargs):
    """Receiver of `people_changed` (after the ingest transaction commits)."""
    async_task("audiences.tasks.evaluate_pending_people", task_name="evaluate pending people")


def enqueue_at_worker_start(func: str, task_name: str) -> None:
    """For receivers of django-q's `post_spawn`: enqueue `func` when a worker process of a real
    cluster starts (not when a task runs in-process under `Q_CLUSTER["sync"]`, which spawns no
    worker but sends the signal all the same)."""
    if not Conf.SYNC:
        async_task(func, task_name=task_name)


def resume_pending_evaluation(sender=None, **kwargs):
    """Receiver of `post_spawn`: a worker that starts (a restarted cluster) evaluates whatever
    ingest queued while no worker ran, at once rather than at the scheduler's first tick, which
    django-q runs about 30 s after the cluster starts."""
    enqueue_at_worker_start("audiences.tasks.evaluate_pending_people", "resume pending evaluation")
    # the waiter may have run in the worker that died (this one replaces it), or in the cluster
    # that was restarted: its lease would keep any other from starting until it lapsed, and
    # exits would wait for the minute's tick
    if not Conf.SYNC and cache.get(EXPIRY_LEASE):
        async_task("audiences.tasks.evaluate_expiring_people", takeover=True, task_name="take the expiry waiter over")
