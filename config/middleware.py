"""Who may read the dashboard: staff with a role (the Viewer or Retention manager group, or a
superuser). Being logged in is not enough; a staff account with no role sees nothing."""

from django.core.exceptions import PermissionDenied

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
