from django.contrib import admin


class DownstreamAdminSite(admin.AdminSite):
    site_header = "Downstream"
    site_title = "Downstream"
    index_title = "Dashboard"
    site_url = None  # the site is the admin; no "View site" link

    def index(self, request, extra_context=None):
        """The admin index is the dashboard: alerts first, then every audience."""
        from django.core.exceptions import PermissionDenied

        from config.middleware import may_read_dashboard
        from config.worker import worker_status
        from dashboard.views import home

        if not may_read_dashboard(request.user):
            raise PermissionDenied("your account has no role: ask an admin to add you to Viewer or Retention manager")
        return home(request, extra_context={"worker": worker_status()})
