"""Is the background worker alive? Read from django-q2's own cluster stats."""

from dataclasses import dataclass

from django.utils import timezone
from django_q.brokers import get_broker
from django_q.status import Stat


@dataclass
class ClusterInfo:
    host: str
    pid: int
    status: str
    workers: int
    uptime_seconds: float
    seen_seconds_ago: float


@dataclass
class WorkerStatus:
    clusters: list
    queued: int | None
    broker: str

    @property
    def running(self) -> bool:
        return any(c.status in ("Idle", "Working", "Starting") for c in self.clusters)


def worker_status() -> WorkerStatus:
    broker = get_broker()
    now = timezone.now()
    clusters = []
    for stat in Stat.get_all(broker=broker) or []:
        clusters.append(
            ClusterInfo(
                host=stat.host,
                pid=stat.pid,
                status=str(stat.status),
                workers=len(stat.workers),
                uptime_seconds=stat.uptime(),
                seen_seconds_ago=(now - stat.timestamp).total_seconds(),
            )
        )
    try:
        queued = broker.queue_size()
    except Exception:  # the broker being down is exactly what this panel must show
        queued = None
    return WorkerStatus(clusters=clusters, queued=queued, broker=broker.info())
