from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AudiencesConfig(AppConfig):
    name = "audiences"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from .roles import ensure_roles

        post_migrate.connect(ensure_roles, dispatch_uid="downstream-ensure-roles")
