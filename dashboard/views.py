"""The dashboard pages. Thin: load, check permission, call one selector or service, render."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from audiences import rules as r
from audiences.identifiers import find_people
from audiences.models import Audience, Event, Membership, Person
from audiences.preview import saved_audience_preview
from syncs.alerts import alert_acknowledge
from syncs.audit import person_timeline, setting_changes
from syncs.lift import lift_panel, sync_holdout
from syncs.models import Alert, DeliveryBatch, Destination, RemovalHold, Sync, SyncRun
from syncs.monitoring import Thresholds
from syncs.outcomes import outcome_rows
from syncs.readback import read_back_summary
from syncs.review import weekly_review
from syncs.selectors import (
    lag_histogram,
    rejected_rows,
    size_lows,
    size_series,
    suppression_lag,
    suppression_lag_series,
    suppression_lag_values,
)
from syncs.wire import first_batch

from . import charts
from .context import dashboard_context
from .rows import dashboard_rows, open_alerts

BUCKETS = {
    "hour": (timedelta(hours=1), timedelta(hours=48), "%H:%M"),
    "day": (timedelta(days=1), timedelta(days=60), "%b %d"),
    "week": (timedelta(weeks=1), timedelta(weeks=52), "%b %d"),
}


def _bad_request(message: str) -> HttpResponseBadRequest:
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


def page(request, template, title, **context):
    return render(request, template, {**dashboard_context(request), "title": title, **context})


def home(request, extra_context=None):
    filters = {k: request.GET.get(k, "") for k in ("purpose", "destination", "owner")}
    rows = dashboard_rows(**filters)
    owners = sorted({row.audience.owner.username for row in rows if row.audience.owner})
    return page(
        request,
        "dashboard/home.html",
        "Dashboard",
        rows=rows,
        alerts=open_alerts(),
        filters=filters,
        destinations=Destination.objects.order_by("name"),
        owners=owners,
        **(extra_context or {}),
    )


def audience_detail(request, key):
    audience = get_object_or_404(Audience.objects.select_related("owner", "identifier_policy", "priority_group"), key=key)
    bucket_name = request.GET.get("by", "day") if request.GET.get("by") in BUCKETS else "day"
    bucket, span, label = BUCKETS[bucket_name]
    now = timezone.now()
    first = audience.size_samples.order_by("at").values_list("at", flat=True).first()
    since = max(now - span, first - bucket) if first else now - span  # no empty months before the first evaluation
    series = size_series([audience.pk], since=since, until=now, bucket=bucket)[audience.pk]
    lows = size_lows([audience.pk], since=since, until=now, bucket=bucket).get(audience.pk, {})
    names = dict(Audience.objects.values_list("key", "name"))
    rule_problem = ""
    try:
        rule_words = r.describe(r.parse_rule(audience.rule), names) if audience.rule else ""
    except r.RuleError as exc:
        rule_words, rule_problem = "", str(exc)
    preview, preview_error = saved_audience_preview(audience)
    overlaps = [o for o in _current_overlaps(audience) if o[1]]
    sample = Person.objects.filter(memberships__audience=audience, memberships__exited_at__isnull=True).order_by(
        "-memberships__entered_at"
    )[:20]
    return page(
        request,
        "dashboard/audience.html",
        audience.name,
        audience=audience,
        bucket=bucket_name,
        buckets=list(BUCKETS),
        chart=charts.size_chart(series, label_format=label, title=f"{audience.name} size", lows=lows),
        series=[p for p in series if p[1] is not None][-14:],
        rule_words=rule_words,
        rule_problem=rule_problem,
        exclusions=audience.exclusions.all(),
        preview=preview,
        preview_error=preview_error,
        overlaps=overlaps,
        overlap_chart=charts.bars([(name, count) for name, count in overlaps[:10]]),
        sample=sample,
        syncs=audience.syncs.select_related("destination"),
        outcomes=outcome_rows(audience, days=14),
        lift=lift_panel(audience),
        alerts=audience.alerts.open(),
        can_edit=request.user.has_perm("audiences.change_audience"),
    )


def _current_overlaps(audience):
    from django.db.models import Count

    members = audience.memberships.current().values("person_id")
    counts = dict(
        Membership.objects.current()
        .filter(person_id__in=members)
        .exclude(audience=audience)
        .values_list("audience_id")
        .annotate(n=Count("pk"))
    )
    names = dict(Audience.objects.exclude(pk=audience.pk).values_list("pk", "name"))
    return sorted(((names[pk], n) for pk, n in counts.items() if pk in names), key=lambda x: -x[1])


def sync_detail(request, key):
    sync = get_object_or_404(Sync.objects.select_related("audience", "destination"), key=key)
    now = timezone.now()
    runs = list(sync.runs.all()[:30])
    lag_values = suppression_lag_values(sync, since=now - timedelta(days=1))
    lag = suppression_lag(sync, since=now - timedelta(days=1))
    series = suppression_lag_series(sync, since=now - timedelta(hours=24), bucket=timedelta(hours=1))
    target = Thresholds.from_settings().lag_target_s
    batches = {str(b.batch_id): b for b in DeliveryBatch.objects.filter(sync=sync).order_by("-sent_at")[:200]}
    rejected = [(d, _sent_row(batches.get(str(d.batch_id)), d.pk)) for d in rejected_rows(sync, limit=50)]
    return page(
        request,
        "dashboard/sync.html",
        f"{sync.audience.name} → {sync.destination.name}",
        sync=sync,
        runs=runs,
        lag=lag,
        lag_chart=charts.lag_chart([(at, f.p50, f.p95) for at, f in series], target=target),
        target=target,
        lag_histogram=charts.bars(lag_histogram(lag_values)),
        rejected=rejected,
        holds=sync.holds.filter(decision=RemovalHold.PENDING),
        decided_holds=sync.holds.exclude(decision=RemovalHold.PENDING)[:10],
        dry_runs=DeliveryBatch.objects.filter(sync=sync, error__startswith="dry run")[:20],
        pending=sync.deliveries.pending().count(),
        can_change=request.user.has_perm("syncs.change_sync"),
        wire=first_batch(sync),
        readback=read_back_summary(sync),
        holdout=sync_holdout(sync),
    )


def _sent_row(batch, delivery_id):
    if not batch:
        return None
    return next((row for row in batch.rows if row.get("delivery") == delivery_id), None)


@require_POST
@permission_required("syncs.change_sync", raise_exception=True)
def sync_pause(request, key):
    from syncs.services import sync_set_paused

    sync = get_object_or_404(Sync, key=key)
    if request.POST.get("paused") not in ("0", "1"):
        return _bad_request("paused must be 1 (pause) or 0 (resume).")
    paused = request.POST["paused"] == "1"
    sync_set_paused(sync=sync, paused=paused, actor=request.user)
    messages.success(request, f"{sync.key} {'paused: changes keep queueing' if paused else 'resumed'}.")
    return redirect("dashboard:sync", key=key)


@require_POST
@permission_required("syncs.change_sync", raise_exception=True)
def hold_decide(request, key, hold_id):
    from syncs.services import hold_decide as decide

    hold = get_object_or_404(RemovalHold, pk=hold_id, sync__key=key)
    if request.POST.get("decision") not in ("approve", "discard"):
        return _bad_request("decision must be approve or discard; nothing was decided.")
    approve = request.POST["decision"] == "approve"
    try:
        count = decide(hold=hold, approve=approve, actor=request.user)
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    else:
        messages.success(request, f"{'Released' if approve else 'Discarded'} {count:,} held removal(s).")
    return redirect("dashboard:sync", key=key)


@require_POST
@permission_required("syncs.change_sync", raise_exception=True)
def send_test_cohort(request, key):
    from syncs.services import sync_send_test_cohort

    sync = get_object_or_404(Sync, key=key)
    count = sync_send_test_cohort(sync=sync, actor=request.user)
    messages.success(request, f"Queued {count} internal test account(s) for {sync.destination.name}.")
    return redirect("dashboard:sync", key=key)


def alerts(request):
    recent = Alert.objects.filter(resolved_at__isnull=False).select_related("audience", "sync")[:50]
    return page(
        request,
        "dashboard/alerts.html",
        "Alerts",
        open=open_alerts(200),
        recent=recent,
        can_ack=request.user.has_perm("syncs.change_alert"),
    )


@require_POST
def alert_ack(request, alert_id):
    if not request.user.has_perm("syncs.change_alert"):
        raise PermissionDenied
    alert = get_object_or_404(Alert, pk=alert_id)
    alert_acknowledge(alert=alert, actor=request.user)
    messages.success(request, "Alert acknowledged.")
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = "dashboard:alerts"  # never send a signed-in person off to a URL a link chose
    return redirect(back)


def people(request):
    query = request.GET.get("q", "").strip()
    found = []
    if query:
        found = list(find_people(Person.objects.all(), query)[:20])
        if len(found) == 1:
            return redirect("dashboard:person", person_id=found[0].pk)
    return page(request, "dashboard/people.html", "Find a person", query=query, found=found)


def person(request, person_id):
    person = Person.objects.filter(pk=person_id).first()
    if person is None:
        raise Http404("No such person (they may have been erased).")
    timeline = person_timeline(person)
    return page(
        request,
        "dashboard/person.html",
        f"Person {person.customer_id}",
        person=person,
        timeline=timeline,
        current=person.memberships.current().select_related("audience"),
        event_count=Event.objects.filter(person=person).count(),
    )


def history(request):
    kind = request.GET.get("kind", "")
    return page(request, "dashboard/history.html", "Setting history", changes=setting_changes(kind=kind, limit=200), kind=kind)


def review(request):
    week = request.GET.get("week", "")
    try:
        report = weekly_review(week_ending=week or None)
    except (ValueError, OverflowError):  # not a date, or a day past 9999-12-30
        return _bad_request(f"week={week!r} is not a date: give the last day of the week, such as ?week=2026-11-29.")
    return page(request, "dashboard/review.html", f"Weekly review, week ending {report.last_day:%d %b %Y}", report=report)


def runs(request, key):
    from syncs.retention import run_days

    sync = get_object_or_404(Sync, key=key)
    return page(
        request,
        "dashboard/runs.html",
        f"Runs of {sync.key}",
        sync=sync,
        runs=SyncRun.objects.filter(sync=sync).order_by("-started_at")[:200],
        days=run_days(sync),
    )
