from pathlib import Path

from django.apps import AppConfig


class SyncsConfig(AppConfig):
    name = "syncs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_migrate
        from django_q.signals import post_spawn

        from audiences.demo import DEMO_CONFIG_FILES, DEMO_EXTRAS
        from audiences.signals import membership_changed

        from . import config, sources
        from .holdouts import ensure_global_holdout
        from .outbox import on_membership_changed
        from .tasks import resume_deliveries

        membership_changed.connect(on_membership_changed, dispatch_uid="downstream-outbox")
        post_spawn.connect(resume_deliveries, dispatch_uid="downstream-resume-deliveries")
        post_migrate.connect(ensure_global_holdout, sender=self, dispatch_uid="downstream-global-holdout")
        config.register()
        sources.register()
        demo_file = Path(__file__).with_name("demo_config.yaml")
        if demo_file not in DEMO_CONFIG_FILES:
            DEMO_CONFIG_FILES.append(demo_file)
        from .demo import load_holdout_history

        if load_holdout_history not in DEMO_EXTRAS:
            DEMO_EXTRAS.append(load_holdout_history)
