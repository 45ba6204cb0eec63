from django.contrib import admin


class DownstreamAdminSite(admin.AdminSite):
    site_header = "Downstream"
    site_title = "Downstream"
    index_title = "Dashboard"
    site_url = None  # the site is the admin; no "View site" link

    def index(self, request, extra_context=None):
        """The admin index is the dashboard: alerts first, then every audience."""
        from config.worker import worker_status
        from syncs.views import home

        return home(request, extra_context={"worker": worker_status(), "app_list": self.get_app_list(request)})
