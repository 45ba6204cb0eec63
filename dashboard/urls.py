"""The dashboard's pages, under /dashboard/."""

from django.urls import path
from django.views.generic import RedirectView

from . import editor_views, retention_views, setup_views, views

app_name = "dashboard"

urlpatterns = [
    # the home page is the admin's index (config/urls.py); /dashboard/ typed by hand goes there
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False), name="home"),
    path("audiences/new/", editor_views.audience_new, name="audience-new"),
    path("audiences/editor/preview", editor_views.editor_preview, name="editor-preview"),
    path("audiences/editor/check-name", editor_views.editor_check_name, name="editor-check-name"),
    path("audiences/<slug:key>/", views.audience_detail, name="audience"),
    path("audiences/<slug:key>/edit/", editor_views.audience_edit, name="audience-edit"),
    path("syncs/new/", setup_views.sync_new, name="sync-new"),
    path("syncs/<slug:key>/", views.sync_detail, name="sync"),
    path("syncs/<slug:key>/runs/", views.runs, name="sync-runs"),
    path("syncs/<slug:key>/pause", views.sync_pause, name="sync-pause"),
    path("syncs/<slug:key>/test-cohort", views.send_test_cohort, name="sync-test-cohort"),
    path("syncs/<slug:key>/holds/<int:hold_id>", views.hold_decide, name="hold-decide"),
    path("syncs/<slug:key>/edit/", setup_views.sync_edit, name="sync-edit"),
    path("syncs/<slug:key>/go-live", setup_views.sync_go_live, name="sync-go-live"),
    path("destinations/", setup_views.destinations, name="destinations"),
    path("destinations/new/", setup_views.destination_new, name="destination-new"),
    path("destinations/<slug:key>/", setup_views.destination_edit, name="destination-edit"),
    path("destinations/<slug:key>/test", setup_views.destination_test, name="destination-test"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/<int:alert_id>/acknowledge", views.alert_ack, name="alert-ack"),
    path("people/", views.people, name="people"),
    # by the person's own number: a customer id may hold any character, "/" and ".." included
    path("people/<int:person_id>/", views.person, name="person"),
    path("history/", views.history, name="history"),
    path("review/weekly/", views.review, name="review"),
    path("storage/", retention_views.storage, name="storage"),
]
