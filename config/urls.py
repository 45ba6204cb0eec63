from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from audiences import views_editor, views_ingest
from syncs import views
from syncs import views_ingest as sync_ingest

dashboard = [
    path("audiences/new/", views_editor.audience_new, name="audience-new"),
    path("audiences/editor/preview", views_editor.editor_preview, name="editor-preview"),
    path("audiences/editor/check-name", views_editor.editor_check_name, name="editor-check-name"),
    path("audiences/<slug:key>/", views.audience_detail, name="audience"),
    path("audiences/<slug:key>/edit/", views_editor.audience_edit, name="audience-edit"),
    path("syncs/<slug:key>/", views.sync_detail, name="sync"),
    path("syncs/<slug:key>/runs/", views.runs, name="sync-runs"),
    path("syncs/<slug:key>/pause", views.sync_pause, name="sync-pause"),
    path("syncs/<slug:key>/test-cohort", views.send_test_cohort, name="sync-test-cohort"),
    path("syncs/<slug:key>/holds/<int:hold_id>", views.hold_decide, name="hold-decide"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/<int:alert_id>/acknowledge", views.alert_ack, name="alert-ack"),
    path("people/", views.people, name="people"),
    # by the person's own number: a customer id may hold any character, "/" and ".." included
    path("people/<int:person_id>/", views.person, name="person"),
    path("history/", views.history, name="history"),
    path("review/weekly/", views.review, name="review"),
]

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("dashboard/", include((dashboard, "dashboard"))),
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
