from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from audiences import views_ingest
from syncs import views_ingest as sync_ingest

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
    # Segment / Customer.io Data Pipelines spec
    path("ingest/v1/batch", views_ingest.batch, name="ingest-batch"),
    path("ingest/v1/track", views_ingest.track, name="ingest-track"),
    path("ingest/v1/identify", views_ingest.identify, name="ingest-identify"),
    path("ingest/v1/page", views_ingest.page, name="ingest-page"),
    path("ingest/v1/screen", views_ingest.screen, name="ingest-screen"),
    path("ingest/v1/outcomes", sync_ingest.outcomes, name="ingest-outcomes"),
    # Customer.io Track API v1
    # `path`, not `str`: an id may hold "/" (sent as %2F, which arrives decoded); the events
    # route comes first, and hands PUT and DELETE of an id that ends in "/events" back
    path(
        "track/api/v1/customers/<path:customer_id>/events",
        views_ingest.track_customer_event,
        name="track-customer-event",
    ),
    path("track/api/v1/customers/<path:customer_id>", views_ingest.track_customer, name="track-customer"),
]
