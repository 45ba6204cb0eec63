"""The two roles, as Django groups: a retention manager changes audiences and syncs; a viewer
only reads. Kept current after every `migrate`, so a new model's permissions join its role."""

from django.apps import apps as global_apps

RETENTION_MANAGER = "Retention manager"
VIEWER = "Viewer"
ROLE_APPS = ("audiences", "syncs", "django_q")

# Models a retention manager may add, change and delete. Everything else in ROLE_APPS is read
# only for both roles: logs, history and figures are written by the system, and write keys
# (sources) belong to the engineer who runs the ingest.
MANAGER_EDITS = {
    "audiences": {"audience", "namingconvention", "identifierpolicy", "person", "prioritygroup"},
    "syncs": {"destination", "sync", "alert", "baseline", "removalhold", "globalholdout"},
}


def role_permissions(role: str, permission_model):
    perms = permission_model.objects.filter(content_type__app_label__in=ROLE_APPS).select_related("content_type")
    chosen = []
    for perm in perms:
        action = perm.codename.split("_", 1)[0]
        model = perm.content_type.model
        if action == "view":
            chosen.append(perm)
        elif role == RETENTION_MANAGER and model in MANAGER_EDITS.get(perm.content_type.app_label, ()):
            chosen.append(perm)
    return chosen


def ensure_roles(sender=None, apps=global_apps, using="default", **kwargs):
    try:
        group_model = apps.get_model("auth", "Group")
        permission_model = apps.get_model("auth", "Permission")
    except LookupError:
        return
    for role in (RETENTION_MANAGER, VIEWER):
        group, _ = group_model.objects.using(using).get_or_create(name=role)
        group.permissions.set(role_permissions(role, permission_model))
