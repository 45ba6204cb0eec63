"""The storage page: how big the store is and what retention keeps (syncs.retention)."""

from __future__ import annotations

from syncs.retention import retention_overview

from .views import page


def storage(request):
    return page(request, "dashboard/storage.html", "Storage and retention", overview=retention_overview())
