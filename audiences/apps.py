from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AudiencesConfig(AppConfig):
    name = "audiences"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django_q.signals import post_spawn

        from .roles import ensure_roles
        from .signals import people_changed
        from .tasks import enqueue_pending_evaluation, resume_pending_evaluation

        post_migrate.connect(ensure_roles, dispatch_uid="downstream-ensure-roles")
        people_changed.connect(enqueue_pending_evaluation, dispatch_uid="downstream-realtime-evaluation")
        post_spawn.connect(resume_pending_evaluation, dispatch_uid="downstream-resume-evaluation")
