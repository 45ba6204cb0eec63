"""Who may read the dashboard: staff with a role (the Viewer or Retention manager group, or a
superuser). Being logged in is not enough; a staff account with no role sees nothing."""

from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, JsonResponse

DASHBOARD_PERMISSION = "audiences.view_audience"


def may_read_dashboard(user) -> bool:
    return user.is_authenticated and user.is_active and user.is_staff and user.has_perm(DASHBOARD_PERMISSION)


class DashboardAccessMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        # anonymous requests were already sent to the login page by LoginRequiredMiddleware
        if request.path.startswith("/dashboard/") and request.user.is_authenticated and not may_read_dashboard(request.user):
            raise PermissionDenied("your account has no role: ask an admin to add you to Viewer or Retention manager")
        return None


NUL_MESSAGE = "{where} holds a NUL character (\\0), which no text here may hold; remove it and send again."


def _nul_in(request) -> str | None:
    if "\x00" in request.path:
        return "the address"
    for name, values in (*request.GET.lists(), *request.POST.lists()):
        if "\x00" in name or any("\x00" in value for value in values):
            return f"the field {name.replace(chr(0), '')!r}"
    return None


class NulCharacterMiddleware:
    """Text with a NUL character cannot be stored or looked up (PostgreSQL refuses it), so a
    dashboard or admin request holding one is a 400 that says so, before its view runs (and
    after the login and role checks). The ingest API validates its own bodies and is left alone."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if not request.path_info.startswith(("/dashboard/", "/admin/")) or not (where := _nul_in(request)):
            return None
        message = NUL_MESSAGE.format(where=where[0].upper() + where[1:])
        if request.content_type == "application/json":
            return JsonResponse({"errors": [message]}, status=400)
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
