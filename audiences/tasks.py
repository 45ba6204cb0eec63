"""Worker entry points. Tasks take ids, are idempotent, and call one service each."""

from django_q.tasks import async_task

from .evaluation import evaluate_audience, evaluate_due, evaluate_pending
from .models import Audience


def evaluate_pending_people():
    """Realtime audiences for the people ingest queued; a burst coalesces into one pass."""
    return evaluate_pending()


def evaluate_due_audiences():
    return len(evaluate_due())


def evaluate_one(audience_id: int):
    audience = Audience.objects.filter(pk=audience_id, enabled=True).first()
    return evaluate_audience(audience).size if audience else None


def enqueue_pending_evaluation(sender=None, person_ids=(), **kwargs):
    """Receiver of `people_changed` (after the ingest transaction commits)."""
    async_task("audiences.tasks.evaluate_pending_people", task_name="evaluate pending people")
