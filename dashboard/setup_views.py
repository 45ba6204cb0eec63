"""Destinations and syncs set up from the dashboard: forms made from each kind's spec, a
connection test, the first batch previewed as it will go on the wire, and going live as an
explicit, recorded step. Writes go through `syncs.services`; nothing here knows a kind."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from audiences.models import Audience, IdentifierPolicy
from syncs import services
from syncs.destinations.forms import (
    CREDENTIAL,
    NUMBERS,
    SETTING,
    destination_data,
    destination_form,
    destination_initial,
    error_field,
)
from syncs.destinations.registry import KINDS, spec_for
from syncs.models import Destination, Sync
from syncs.payload import PERSON_COLUMNS
from syncs.wire import check_connection

from .context import dashboard_context

COLUMN_LABELS = {"customer_id": "Customer id", "email": "Email", "phone": "Phone (E.164)", "cio_id": "Customer.io cio_id"}


def _page(request, template, title, status=200, **context):
    return render(request, template, {**dashboard_context(request), "title": title, **context}, status=status)


def _apply_errors(form, problems: dict, place) -> None:
    """Service messages beside the fields they are about; the rest at the top of the form."""
    for field, messages_ in problems.items():
        for message in messages_:
            name = place(field, message)
            form.add_error(name if name in form.fields else None, message if name in form.fields else f"{field}: {message}")


def destinations(request):
    rows = Destination.objects.annotate(sync_count=Count("syncs")).order_by("name")
    return _page(
        request,
        "dashboard/destinations.html",
        "Destinations",
        destinations=rows,
        kinds=KINDS.values(),
        can_add=request.user.has_perm("syncs.add_destination"),
    )


@permission_required("syncs.add_destination", raise_exception=True)
def destination_new(request):
    kind = request.GET.get("kind") or request.POST.get("kind")
    if kind not in KINDS:
        return _page(
            request,
            "dashboard/destination_kinds.html",
            "New destination",
            kinds=KINDS.values(),
            status=400 if kind else 200,
            unknown=kind,
        )
    return _destination_editor(request, spec_for(kind), None)


@permission_required("syncs.change_destination", raise_exception=True)
def destination_edit(request, key):
    destination = get_object_or_404(Destination, key=key)
    return _destination_editor(request, spec_for(destination.kind), destination)


def _destination_editor(request, spec, destination):
    form_class = destination_form(spec, instance=destination)
    initial = destination_initial(spec, destination)
    form = form_class(request.POST, initial=initial) if request.method == "POST" else form_class(initial=initial)
    if destination:  # shown disabled, so a browser does not send it (and it never changes)
        form.fields["key"].disabled = True
    if request.method == "POST" and form.is_valid():
        try:
            data = destination_data(spec, form.cleaned_data, instance=destination)
            if destination:
                data.pop("key")
            saved = services.destination_save(data=data, actor=request.user, instance=destination)
        except ValidationError as exc:  # a line written wrong (keyed by its field) or the service's word
            _apply_errors(form, exc.message_dict, lambda f, m: error_field(spec, f, m))
        else:
            messages.success(request, f"Saved {saved.name}. Test the connection before a sync uses it.")
            return redirect("dashboard:destination-edit", key=saved.key)
    title = f"{destination.name} ({spec.label})" if destination else f"New {spec.label} destination"
    groups = {prefix: [form[name] for name in form.fields if name.startswith(prefix)] for prefix in (SETTING, CREDENTIAL)}
    return _page(
        request,
        "dashboard/destination_form.html",
        title,
        form=form,
        spec=spec,
        destination=destination,
        setting_fields=groups[SETTING],
        credential_fields=groups[CREDENTIAL],
        number_fields=[form[name] for name in NUMBERS],
        status=400 if form.errors else 200,
        syncs=destination.syncs.select_related("audience") if destination else [],
    )


@require_POST
@permission_required("syncs.change_destination", raise_exception=True)
def destination_test(request, key):
    destination = get_object_or_404(Destination, key=key)
    reached, said = check_connection(destination)
    (messages.success if reached else messages.error)(request, f"Test connection: {said}")
    return redirect("dashboard:destination-edit", key=key)


class SyncForm(forms.Form):
    key = forms.SlugField(max_length=64, help_text="Stable id for config files and the run history; never changes.")
    mode = forms.ChoiceField(choices=Sync.MODE_CHOICES)
    fields = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Fields sent",
        help_text="Sent beside the identifier; nothing else about a person leaves.",
    )
    other_fields = forms.CharField(
        required=False,
        label="Other attributes",
        help_text="Person attributes by name, separated by commas (e.g. vip_tier, city).",
    )
    identifier_policy = forms.ChoiceField(required=False, label="Identifier")
    match_on = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple, label="Match on")
    downstream_audience_id = forms.CharField(
        required=False, max_length=120, label="Audience id downstream", help_text="Blank: the audience's key."
    )
    additive_only = forms.BooleanField(
        required=False, label="Additive only", help_text="Never send a removal (a lookalike seed, say)."
    )
    test_cohort_only = forms.BooleanField(required=False, label="Test cohort only", help_text="Send internal test accounts only.")
    removal_guard_share = forms.FloatField(
        min_value=0.01,
        max_value=1,
        initial=0.3,
        label="Hold removals above",
        help_text="A share of the audience, e.g. 0.3: larger removals wait for a person.",
    )
    holdout_percent = forms.DecimalField(
        required=False,
        min_value=0,
        max_value=50,
        decimal_places=2,
        initial=0,
        label="Holdout (%)",
        help_text="Members never sent, to measure lift against: 10 holds out 10 %. Applies to people entering from now on.",
    )
    holdout_salt = forms.CharField(
        required=False,
        max_length=64,
        label="Holdout salt",
        help_text="Chooses who is held out, with the customer id; blank: the sync's key.",
    )

    def __init__(self, *args, spec, audience, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec = spec
        self.fields["mode"].choices = [(m, label) for m, label in Sync.MODE_CHOICES if m in spec.modes]
        self.fields["fields"].choices = [(name, COLUMN_LABELS.get(name, name)) for name in PERSON_COLUMNS]
        if spec.match_keys:
            del self.fields["identifier_policy"]
            self.fields["match_on"].choices = [(k.name, k.label) for k in spec.match_keys]
            self.fields["match_on"].help_text = f"What {spec.label} matches people on; none ticked: every one it takes."
        else:
            del self.fields["match_on"]
            own = audience.identifier_policy
            usable = [p for p in IdentifierPolicy.objects.order_by("name") if not spec.identifier_problem(p)]
            default = own.name if own and not spec.identifier_problem(own) else "Customer id"
            self.fields["identifier_policy"].choices = [("", f"The audience's default ({default})")] + [
                (p.key, p.name) for p in usable
            ]
            self.fields["identifier_policy"].help_text = spec.identifier_hint
        if not spec.removes:
            del self.fields["additive_only"]
        if audience.purpose == Audience.SUPPRESSION:  # a suppression sync never holds anyone out
            del self.fields["holdout_percent"], self.fields["holdout_salt"]

    def service_data(self) -> dict:
        data = dict(self.cleaned_data)
        if "holdout_percent" in data:
            data["holdout_share"] = float(data.pop("holdout_percent") or 0) / 100
        others = [name.strip() for name in data.pop("other_fields", "").split(",") if name.strip()]
        data["fields"] = list(data.get("fields") or []) + [n for n in others if n not in data.get("fields", [])]
        if "identifier_policy" in data:
            data["identifier_policy"] = data["identifier_policy"] or None
        return data


@permission_required("syncs.add_sync", raise_exception=True)
def sync_new(request):
    """Step one picks the audience and the destination; step two, the kind's own form."""
    audience = Audience.objects.filter(key=request.GET.get("audience") or request.POST.get("audience") or "").first()
    destination = Destination.objects.filter(key=request.GET.get("destination") or request.POST.get("destination") or "").first()
    if not (audience and destination):
        return _page(
            request,
            "dashboard/sync_start.html",
            "New sync",
            audiences=Audience.objects.order_by("name"),
            destinations=Destination.objects.order_by("name"),
            chosen_audience=audience,
            chosen_destination=destination,
            status=400 if request.GET.get("audience") or request.GET.get("destination") else 200,
        )
    return _sync_editor(request, audience, destination, None)


@permission_required("syncs.change_sync", raise_exception=True)
def sync_edit(request, key):
    sync = get_object_or_404(Sync.objects.select_related("audience", "destination"), key=key)
    return _sync_editor(request, sync.audience, sync.destination, sync)


def _sync_initial(sync: Sync | None, audience, destination) -> dict:
    if sync is None:
        return {"key": f"{audience.key}-{destination.key}"[:64], "mode": Sync.MEMBERSHIP, "removal_guard_share": 0.3}
    listed = [f for f in sync.fields if f in PERSON_COLUMNS]
    return {
        "key": sync.key,
        "mode": sync.mode,
        "fields": listed,
        "other_fields": ", ".join(f for f in sync.fields if f not in PERSON_COLUMNS),
        "identifier_policy": sync.identifier_policy.key if sync.identifier_policy else "",
        "match_on": sync.match_on,
        "downstream_audience_id": sync.downstream_audience_id,
        "additive_only": sync.additive_only,
        "test_cohort_only": sync.test_cohort_only,
        "removal_guard_share": sync.removal_guard_share,
        "holdout_percent": round(sync.holdout_share * 100, 2),
        "holdout_salt": sync.holdout_salt,
    }


def _sync_editor(request, audience, destination, sync):
    spec = spec_for(destination.kind)
    if request.method != "POST":
        form = SyncForm(initial=_sync_initial(sync, audience, destination), spec=spec, audience=audience)
    else:
        form = SyncForm(request.POST, spec=spec, audience=audience)
        if sync:  # the key is shown disabled, so a browser does not send it (and it never changes)
            form.fields["key"].required = False
        if form.is_valid():
            data = form.service_data()
            if sync:
                data.pop("key")
            else:
                # every new sync starts in dry run: it records what it would send until someone goes live
                data.update(audience=audience.key, destination=destination.key, dry_run=True)
            try:
                saved = services.sync_save(data=data, actor=request.user, instance=sync)
            except ValidationError as exc:
                _apply_errors(form, exc.message_dict, lambda f, m: "holdout_percent" if f == "holdout_share" else f)
            else:
                messages.success(
                    request,
                    f"Saved {saved.key}."
                    + (" It is in dry run: check the first batch below, then go live." if saved.dry_run else ""),
                )
                return redirect("dashboard:sync", key=saved.key)
    if sync:
        form.fields["key"].disabled = True
    title = f"Edit {sync.key}" if sync else f"New sync: {audience.name} → {destination.name}"
    return _page(
        request,
        "dashboard/sync_form.html",
        title,
        form=form,
        spec=spec,
        sync=sync,
        audience=audience,
        destination=destination,
        status=400 if form.errors else 200,
    )


@require_POST
@permission_required("syncs.change_sync", raise_exception=True)
def sync_go_live(request, key):
    sync = get_object_or_404(Sync, key=key)
    try:
        services.sync_go_live(sync=sync, actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{sync.key} is live: its first run sends the audience's current members now.")
    return redirect("dashboard:sync", key=key)
