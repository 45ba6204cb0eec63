from django.contrib import admin, messages
from django.db.models import Q
from django.db.models.functions import Lower

from .ingest import source_revoke, source_rotate_key
from .models import Erasure, Event, EventStat, Person, Source


class ReadOnlyAdmin(admin.ModelAdmin):
    """Logs and figures the system writes: people can look, nobody edits."""

    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = ("name", "key_hint", "created_at", "revoked_at")
    readonly_fields = ("key_hint", "created_at", "revoked_at")
    fields = ("name", "key_hint", "created_at", "revoked_at")
    actions = ("revoke_keys", "rotate_keys")

    def save_model(self, request, obj, form, change):
        if not change:
            key = Source.new_write_key()
            obj.set_write_key(key)
            super().save_model(request, obj, form, change)
            self._show_key_once(request, obj, key)
        else:
            super().save_model(request, obj, form, change)

    def _show_key_once(self, request, source, key):
        messages.warning(
            request,
            f"Write key for {source.name}: {key}  (copy it now: it is stored hashed and will not be shown again)",
        )

    @admin.action(description="Revoke the write key of the selected sources")
    def revoke_keys(self, request, queryset):
        for source in queryset:
            source_revoke(source=source)
        self.message_user(request, f"Revoked {queryset.count()} key(s); requests with them now get 401.")

    @admin.action(description="Issue a new write key (the old one stops working)")
    def rotate_keys(self, request, queryset):
        for source in queryset:
            self._show_key_once(request, source, source_rotate_key(source=source))


@admin.register(Person)
class PersonAdmin(admin.ModelAdmin):
    list_display = ("customer_id", "email", "phone", "is_test", "updated_at")
    list_filter = ("is_test",)
    search_fields = ("customer_id", "email", "phone", "cio_id")
    search_help_text = "Exact customer id, email, phone or cio_id."
    readonly_fields = ("customer_id", "email", "phone", "cio_id", "attributes", "created_at", "updated_at")
    fields = ("customer_id", "email", "phone", "cio_id", "is_test", "attributes", "created_at", "updated_at")
    show_full_result_count = False
    ordering = ("-id",)

    def has_add_permission(self, request):
        return False  # people arrive through the ingest API, never by hand

    def get_search_results(self, request, queryset, search_term):
        # Exact matches on indexed columns: a substring search would scan a million rows.
        term = search_term.strip()
        if not term:
            return queryset, False
        matches = queryset.alias(email_lower=Lower("email")).filter(
            Q(customer_id=term) | Q(email_lower=term.lower()) | Q(phone=term) | Q(cio_id=term)
        )
        return matches, False


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
