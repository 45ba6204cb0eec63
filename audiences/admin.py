from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers
from simple_history.admin import SimpleHistoryAdmin

from . import services
from .dependencies import dependencies
from .identifiers import find_people
from .ingest import source_revoke, source_rotate_key
from .models import (
    SCOPE_CHOICES,
    TRACK,
    Audience,
    Erasure,
    Event,
    EventStat,
    IdentifierPolicy,
    Membership,
    NamingConvention,
    Person,
    PriorityGroup,
    SizeSample,
    Source,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Logs and figures the system writes: people can look, nobody edits."""

    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class HistoryAdmin(SimpleHistoryAdmin):
    """simple_history's "revert" form saves whatever is posted to it for anyone who may view the
    history (it only hides the button from others); posting it needs the change permission."""

    def history_view(self, request, object_id, extra_context=None):
        # simple_history looks the id up as given: one that is not a number would be a 500
        try:
            self.model._meta.pk.to_python(unquote(object_id))
        except ValidationError:
            raise Http404(f"There is no {self.model._meta.verbose_name} with the id {unquote(object_id)!r}.")
        return super().history_view(request, object_id, extra_context=extra_context)

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        if request.method == "POST" and not self.has_change_permission(request, self.get_object(request, unquote(object_id))):
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context=extra_context)


class _DryRun(Exception):
    pass


class ServiceAdmin(HistoryAdmin):
    """Admin forms write through the services, so the admin validates exactly like config as
    code. The form's clean() runs the service inside a rolled-back transaction to collect its
    errors as form errors; save_model() runs it for real."""

    save_service = None

    def service_data(self, form) -> dict:
        raise NotImplementedError

    def _call(self, request, form, pk):
        instance = form._meta.model.objects.get(pk=pk) if pk else None
        return type(self).save_service(data=self.service_data(form), actor=request.user, instance=instance)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        model_admin, pk = self, obj.pk if obj else None

        class CheckedByService(form_class):
            def clean(self):
                cleaned = super().clean()
                if self.errors:
                    return cleaned
                try:
                    with transaction.atomic():
                        model_admin._call(request, self, pk)
                        raise _DryRun
                except _DryRun:
                    pass
                except ValidationError as exc:
                    for field, errors in exc.message_dict.items():
                        self.add_error(field if field in self.fields else None, errors)
                return cleaned

        return CheckedByService

    def save_model(self, request, obj, form, change):
        obj.pk = self._call(request, form, obj.pk if change else None).pk

    def save_related(self, request, form, formsets, change):
        pass  # the service has written everything


class SourceForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES,
        initial=[TRACK],
        widget=forms.CheckboxSelectMultiple,
        help_text="A key in a browser or an app is public: give it track only. Erasure and outcomes are for server keys.",
    )

    class Meta:
        model = Source
        fields = ("name", "scopes")


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    form = SourceForm
    list_display = ("name", "scopes", "key_hint", "created_at", "revoked_at")
    readonly_fields = ("key_hint", "created_at", "revoked_at")
    fields = ("name", "scopes", "key_hint", "created_at", "revoked_at")
    actions = ("revoke_keys", "rotate_keys")

    def save_model(self, request, obj, form, change):
        if not change:
            key = Source.new_write_key()
            obj.set_write_key(key)
            obj._new_write_key = key  # for response_add only; never stored
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        return self._show_keys_once(request, [(obj, obj._new_write_key)])

    def _show_keys_once(self, request, keys):
        """New keys are shown on the page that answers the request that made them: never in a
        message (the messages framework keeps them in a cookie or the session), never cached."""
        response = TemplateResponse(
            request,
            "admin/audiences/source/new_keys.html",
            {
                **self.admin_site.each_context(request),
                "title": "Copy the new write key" + ("s" if len(keys) > 1 else ""),
                "opts": self.model._meta,
                "keys": keys,
            },
        )
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke the write key of the selected sources", permissions=["change"])
    def revoke_keys(self, request, queryset):
        for source in queryset:
            source_revoke(source=source)
        self.message_user(request, f"Revoked {queryset.count()} key(s); requests with them now get 401.")

    @admin.action(description="Issue a new write key (the old one stops working)", permissions=["change"])
    def rotate_keys(self, request, queryset):
        return self._show_keys_once(request, [(source, source_rotate_key(source=source)) for source in queryset])


@admin.register(Person)
class PersonAdmin(admin.ModelAdmin):
    list_display = ("customer_id", "email", "phone", "is_test", "updated_at")
    list_filter = ("is_test",)
    search_fields = ("customer_id", "email", "phone", "cio_id")
    search_help_text = "Exact customer id, email (any case), phone (any format) or cio_id."
    readonly_fields = ("customer_id", "email", "phone", "cio_id", "attributes", "created_at", "updated_at")
    fields = ("customer_id", "email", "phone", "cio_id", "is_test", "attributes", "created_at", "updated_at")
    show_full_result_count = False
    ordering = ("-id",)

    def has_add_permission(self, request):
        return False  # people arrive through the ingest API, never by hand

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return find_people(queryset, term), False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "name", "person", "source", "message_id")
    list_select_related = ("person", "source")
    search_fields = ("=person__customer_id",)
    search_help_text = "Exact customer id."
    ordering = ("-id",)
    raw_id_fields = ("person",)


@admin.register(EventStat)
class EventStatAdmin(ReadOnlyAdmin):
    list_display = ("person", "name", "count", "first_at", "last_at")
    list_select_related = ("person",)
    search_fields = ("=person__customer_id",)
    ordering = ("-id",)


@admin.register(Erasure)
class ErasureAdmin(ReadOnlyAdmin):
    list_display = ("erased_at", "customer_id_hash", "source", "events_deleted")


@admin.register(NamingConvention)
class NamingConventionAdmin(ServiceAdmin):
    list_display = ("key", "template", "example", "is_default")
    fields = ("key", "template", "tokens", "example", "is_default")

    @staticmethod
    def save_service(*, data, actor, instance):
        convention, broken = services.naming_convention_save(data=data, actor=actor, instance=instance)
        return convention

    def service_data(self, form):
        return {k: form.cleaned_data[k] for k in self.fields}


@admin.register(IdentifierPolicy)
class IdentifierPolicyAdmin(ServiceAdmin):
    list_display = ("key", "name", "field", "attribute", "hash_sha256", "default_region")
    fields = ("key", "name", "field", "attribute", "default_region", "hash_sha256")
    save_service = services.identifier_policy_save

    def service_data(self, form):
        return {k: form.cleaned_data[k] for k in self.fields}


@admin.register(PriorityGroup)
class PriorityGroupAdmin(ServiceAdmin):
    list_display = ("key", "name")
    fields = ("key", "name", "description")
    save_service = services.priority_group_save

    def service_data(self, form):
        return {k: form.cleaned_data[k] for k in self.fields}

    def get_deleted_objects(self, objs, request):
        """As config as code refuses: a group's audiences would silently lose it (and overlap)."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for group in objs:
            users = sorted(group.audiences.values_list("key", flat=True))
            if users:
                protected.append(f"{group.key} is used by {', '.join(users)}: change those first")
        return deleted, counts, perms_needed, protected


@admin.register(Audience)
class AudienceAdmin(ServiceAdmin):
    list_display = ("key", "name", "purpose", "cadence", "current_size", "last_evaluated_at", "enabled")
    list_filter = ("purpose", "enabled", "source_kind")
    search_fields = ("key", "name")
    fields = services.AUDIENCE_FIELDS  # what audience_save takes, in its order
    filter_horizontal = ("exclusions",)
    save_service = services.audience_save

    def get_deleted_objects(self, objs, request):
        """The rule of services.audience_delete: an audience another one reads (an exclusion, its
        rule, a higher rank of its group) is protected; deleting it would silently change the other."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        keys = {audience.key for audience in objs}
        for other in Audience.objects.exclude(key__in=keys).prefetch_related("exclusions"):
            used = sorted(keys & dependencies(other))
            if used:
                protected.append(f"{other.key} uses {', '.join(used)}: change it first")
        return deleted, counts, perms_needed, protected

    def service_data(self, form):
        data = {k: form.cleaned_data[k] for k in self.fields}
        data["exclusions"] = [a.key for a in data["exclusions"]]
        for name in ("priority_group", "identifier_policy"):
            data[name] = data[name].key if data[name] else None
        data["owner"] = data["owner"].username if data["owner"] else None
        return data


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ("audience", "person", "entered_at", "exited_at")
    list_select_related = ("audience", "person")
    search_fields = ("=person__customer_id",)
    list_filter = ("audience",)
    ordering = ("-id",)


@admin.register(SizeSample)
class SizeSampleAdmin(ReadOnlyAdmin):
    list_display = ("audience", "at", "size", "entered", "exited", "evaluations", "full")
    list_filter = ("audience",)
    ordering = ("-at",)
