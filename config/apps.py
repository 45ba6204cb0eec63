from django.contrib.admin.apps import AdminConfig


class DownstreamAdminConfig(AdminConfig):
    default_site = "config.admin.DownstreamAdminSite"
