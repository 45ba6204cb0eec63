from pathlib import Path

from django.apps import AppConfig


class SyncsConfig(AppConfig):
    name = "syncs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django_q.signals import post_spawn

        from audiences.demo import DEMO_CONFIG_FILES
        from audiences.signals import membership_changed

        from . import config, sources
        from .outbox import on_membership_changed
        from .tasks import resume_deliveries

        membership_changed.connect(on_membership_changed, dispatch_uid="downstream-outbox")
        post_spawn.connect(resume_deliveries, dispatch_uid="downstream-resume-deliveries")
        config.register()
        sources.register()
        demo_file = Path(__file__).with_name("demo_config.yaml")
        if demo_file not in DEMO_CONFIG_FILES:
            DEMO_CONFIG_FILES.append(demo_file)
