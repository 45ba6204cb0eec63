"""Worker entry points. Tasks take ids, are idempotent, and call one service each."""

from django_q.conf import Conf
from django_q.tasks import async_task

from .evaluation import evaluate_due, evaluate_or_mark_failing, evaluate_pending
from .models import Audience


def evaluate_pending_people():
    """Realtime audiences for the people ingest queued; a burst coalesces into one pass."""
    return evaluate_pending()


def evaluate_due_audiences():
    return len(evaluate_due())


def evaluate_one(audience_id: int):
    audience = Audience.objects.filter(pk=audience_id, enabled=True).first()
    evaluation = evaluate_or_mark_failing(audience) if audience else None
    return evaluation.size if evaluation else None


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
