"""What every dashboard page's template needs from the admin's base template."""

from __future__ import annotations


def dashboard_context(request) -> dict:
    """The admin's base template without its app list (the dashboard pages have no sidebar,
    and building the list checks every model's permissions)."""
    from django.contrib.admin import site

    return {
        "site_title": site.site_title,
        "site_header": site.site_header,
        "site_url": site.site_url,
        "has_permission": site.has_permission(request),
        "is_popup": False,
        "is_nav_sidebar_enabled": False,
        "available_apps": [],
    }
