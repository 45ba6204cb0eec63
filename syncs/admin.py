from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django_q import admin as django_q_admin
from django_q.models import Failure, Success

from audiences.admin import HistoryAdmin, ReadOnlyAdmin, ServiceAdmin

from . import services
from .alerts import alert_acknowledge
from .models import (
    Alert,
    Baseline,
    CustomerIoWorkspace,
    Delivery,
    DeliveryBatch,
    Destination,
    GlobalHoldout,
    Outcome,
    RemovalHold,
    SourcePull,
    Sync,
    SyncRun,
)


class CredentialField(forms.CharField):
    widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "Stored encrypted and never shown again. Leave empty to keep the stored value.")
        super().__init__(**kwargs)


class EditedInTheDashboard(HistoryAdmin):
    """Added and changed in the dashboard's editors only: forms made from the kind's spec (no
    JSON), write-only credentials, Test connection, dry run for every new sync and going live
    as a recorded step. A user who may add or change is sent there; one who may only view keeps
    the admin's read-only page. The list, its actions, the history and delete stay here. A
    version in the history is shown, never reverted: a revert would write settings (or take a
    sync out of dry run) past the editor."""

    dashboard_new: str
    dashboard_edit: str

    def add_view(self, request, form_url="", extra_context=None):
        if self.has_add_permission(request):
            return redirect(self.dashboard_new)
        return super().add_view(request, form_url, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and self.has_change_permission(request, obj):
            return redirect(self.dashboard_edit, key=obj.key)
        return super().change_view(request, object_id, form_url, extra_context)

    def revert_disabled(self, request, obj=None):
        return True

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        if request.method == "POST":
            raise PermissionDenied("A version is not reverted here: change the settings in the dashboard's editor.")
        return super().history_form_view(request, object_id, version_id, extra_context)


@admin.register(Destination)
class DestinationAdmin(EditedInTheDashboard):
    dashboard_new, dashboard_edit = "dashboard:destination-new", "dashboard:destination-edit"
    list_display = ("key", "name", "kind", "batch_size", "rate_limit_per_s", "credentials_set")
    # what a viewer's read-only page shows: never the encrypted credentials or their references
    fields = (
        "key",
        "name",
        "kind",
        "settings",
        "credentials_set",
        "credentials_changed_at",
        "batch_size",
        "rate_limit_per_s",
        "timeout_s",
        "max_attempts",
        "retry_base_s",
        "retry_cap_s",
        "concurrency",
        "lease_owner",
        "lease_until",
        "not_before",
    )
    readonly_fields = ("credentials_set", "credentials_changed_at", "lease_owner", "lease_until", "not_before")

    @admin.display(description="Credentials")
    def credentials_set(self, obj):
        return ", ".join(obj.credential_names()) or "none"


class WorkspaceForm(forms.ModelForm):
    app_key = CredentialField(label="App API key")
    base_url = forms.URLField(required=False, assume_scheme="https", help_text="Overrides the region's host.")

    class Meta:
        model = CustomerIoWorkspace
        fields = ["key", "name", "region", "base_url", "rate_limit_per_s", "timeout_s"]


@admin.register(CustomerIoWorkspace)
class WorkspaceAdmin(ServiceAdmin):
    form = WorkspaceForm
    save_service = services.workspace_save
    list_display = ("key", "name", "region")

    def service_data(self, form):
        data = {k: form.cleaned_data[k] for k in WorkspaceForm.Meta.fields}
        if form.cleaned_data.get("app_key"):
            data["credentials"] = {"app_key": form.cleaned_data["app_key"]}
        return data


@admin.register(Sync)
class SyncAdmin(EditedInTheDashboard):
    dashboard_new, dashboard_edit = "dashboard:sync-new", "dashboard:sync-edit"
    list_display = ("key", "audience", "destination", "mode", "paused", "dry_run", "test_cohort_only", "enabled")
    list_filter = ("paused", "dry_run", "destination")
    fields = (
        "key",
        "audience",
        "destination",
        "mode",
        "fields",
        "identifier_policy",
        "match_on",
        "downstream_audience_id",
        "additive_only",
        "paused",
        "dry_run",
        "test_cohort_only",
        "removal_guard_share",
        "timeout_s",
        "enabled",
        "owner",
        "holdout_share",
        "holdout_salt",
    )
    actions = ("pause", "resume", "send_test_cohort")

    @admin.action(description="Pause the selected syncs (changes keep queueing)", permissions=["change"])
    def pause(self, request, queryset):
        for sync in queryset:
            services.sync_set_paused(sync=sync, paused=True, actor=request.user)
        self.message_user(request, f"Paused {queryset.count()} sync(s).")

    @admin.action(description="Resume the selected syncs", permissions=["change"])
    def resume(self, request, queryset):
        for sync in queryset:
            services.sync_set_paused(sync=sync, paused=False, actor=request.user)
        self.message_user(request, f"Resumed {queryset.count()} sync(s).")

    @admin.action(description="Send the test cohort (internal test accounts in the audience)", permissions=["change"])
    def send_test_cohort(self, request, queryset):
        for sync in queryset:
            count = services.sync_send_test_cohort(sync=sync, actor=request.user)
            self.message_user(request, f"{sync.key}: queued {count} test account(s).")


@admin.register(GlobalHoldout)
class GlobalHoldoutAdmin(ServiceAdmin):
    """The one global paid holdout: changed here (or in a config file), never added or deleted."""

    save_service = services.global_holdout_save
    fields = ("share", "salt")
    list_display = ("__str__", "share", "salt", "updated_at")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def service_data(self, form):
        return {name: form.cleaned_data[name] for name in self.fields}


@admin.register(RemovalHold)
class RemovalHoldAdmin(ReadOnlyAdmin):
    list_display = ("sync", "removals", "audience_size_before", "reason", "opened_at", "decision", "decided_by")
    list_filter = ("decision",)
    actions = ("approve", "discard")

    # Deciding is an action through hold_decide, never an edit of the row: a "change"
    # permission here would open an editable form that sets the decision and releases nothing.
    def has_decide_permission(self, request):
        return request.user.has_perm("syncs.change_sync")

    def _decide(self, request, queryset, approve):
        for hold in queryset.filter(decision=RemovalHold.PENDING):
            count = services.hold_decide(hold=hold, approve=approve, actor=request.user)
            self.message_user(request, f"{hold.sync.key}: {'released' if approve else 'discarded'} {count} removal(s).")

    @admin.action(description="Approve: send the held removals", permissions=["decide"])
    def approve(self, request, queryset):
        self._decide(request, queryset, True)

    @admin.action(description="Discard: never send the held removals", permissions=["decide"])
    def discard(self, request, queryset):
        self._decide(request, queryset, False)


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("opened_at", "kind", "message", "resolved_at", "acknowledged_at", "acknowledged_by")
    list_filter = ("kind",)
    actions = ("acknowledge",)

    # Acknowledging is the one thing a person does to an alert; the system opens and resolves it.
    def has_acknowledge_permission(self, request):
        return request.user.has_perm("syncs.change_alert")

    @admin.action(description="Acknowledge the selected alerts", permissions=["acknowledge"])
    def acknowledge(self, request, queryset):
        for alert in queryset:
            alert_acknowledge(alert=alert, actor=request.user)


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "sync", "kind", "status", "planned", "sent", "rejected", "skipped", "retried", "requests")
    list_filter = ("status", "kind")
    list_select_related = ("sync",)


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("id", "sync", "customer_id", "action", "state", "attempts", "triggered_at", "acknowledged_at", "last_error")
    list_filter = ("state", "action")
    search_fields = ("=customer_id", "=batch_id")
    list_select_related = ("sync",)
    ordering = ("-id",)


@admin.register(DeliveryBatch)
class DeliveryBatchAdmin(ReadOnlyAdmin):
    list_display = ("sent_at", "sync", "batch_id", "attempt", "status", "duration_ms", "error")
    list_select_related = ("sync",)


@admin.register(SourcePull)
class SourcePullAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "audience", "members", "people_created", "unmapped", "requests", "throttled", "error")


@admin.register(Baseline)
class BaselineAdmin(HistoryAdmin):
    """Figures the team captured before launch, shown against outcomes in the weekly review."""

    list_display = ("audience", "captured_on", "cpa", "roas", "frequency", "conversion_rate", "suppression_lag_s", "entered_by")
    list_select_related = ("audience", "entered_by")
    fields = ("audience", "captured_on", "cpa", "roas", "frequency", "conversion_rate", "suppression_lag_s", "notes")

    def save_model(self, request, obj, form, change):
        if not change:
            obj.entered_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(Outcome)
class OutcomeAdmin(ReadOnlyAdmin):
    list_display = ("date", "audience", "source", "impressions", "clicks", "conversions", "spend", "revenue", "currency")
    list_filter = ("audience",)
    list_select_related = ("audience", "source")
    ordering = ("-date",)


# django-q2's "resubmit" action runs the task again (and deletes a failure's record) for anyone
# who can open the list, viewers included; here it needs the change permission no role has.
@admin.action(description="Resubmit selected tasks to queue", permissions=["change"])
def resubmit_task(model_admin, request, queryset):
    django_q_admin.resubmit_task(model_admin, request, queryset)


class SuccessAdmin(django_q_admin.TaskAdmin):
    actions = [resubmit_task]


class FailureAdmin(django_q_admin.FailAdmin):
    actions = [resubmit_task]


for _model, _model_admin in ((Success, SuccessAdmin), (Failure, FailureAdmin)):
    admin.site.unregister(_model)
    admin.site.register(_model, _model_admin)
