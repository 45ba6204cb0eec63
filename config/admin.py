from django.contrib import admin


class DownstreamAdminSite(admin.AdminSite):
    site_header = "Downstream"
    site_title = "Downstream"
    index_title = "Dashboard"

    def index(self, request, extra_context=None):
        from config.worker import worker_status

        context = {"worker": worker_status(), **(extra_context or {})}
        return super().index(request, extra_context=context)
