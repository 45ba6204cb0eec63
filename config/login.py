"""The login page's throttling (django-axes): who is asking, and what a locked-out login sees."""

from django.conf import settings
from django.contrib import admin
from django.template.response import TemplateResponse


def client_address(request) -> str | None:
    """The address logins are counted against: the connection's, or behind PROXY_COUNT proxies
    the one the outermost proxy appended to X-Forwarded-For (what a client writes there itself
    stands further left and is never read)."""
    count = settings.PROXY_COUNT
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if count and len(forwarded) >= count:
        return forwarded[-count]
    return request.META.get("REMOTE_ADDR")


def locked_out(request, original_response=None, credentials=None):
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    context = {
        **admin.site.each_context(request),
        "title": "Too many failed logins",
        "username": username,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "minutes": minutes,
    }
    return TemplateResponse(request, "admin/lockout.html", context, status=429).render()
