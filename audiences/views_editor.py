"""The audience editor: rows for conditions, the YAML beside them, the name checked against the
convention as it is typed, and size, sample and overlap previewed as the form changes."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from config.admin import dashboard_context

from . import editor
from .models import Audience, IdentifierPolicy, PriorityGroup
from .naming import parse_name
from .preview import audience_preview
from .services import audience_save, default_convention

FORM_FIELDS = ("key", "name", "description", "purpose", "cadence", "identifier_policy", "priority_group", "priority_rank")
ROW_KINDS = [
    ("did", "did an event"), ("did_not", "did not do an event"), ("last_between", "last did an event between"),
    ("attribute", "has an attribute"), ("in_audience", "is in audience"), ("not_in_audience", "is not in audience"),
]
OPERATORS = [
    ("eq", "is"), ("ne", "is not"), ("gt", ">"), ("gte", "≥"), ("lt", "<"), ("lte", "≤"), ("in", "is one of"),
    ("contains", "contains"), ("exists", "exists"), ("older_than", "is older than"), ("newer_than", "is newer than"),
]


def _choices(audience=None) -> dict:
    from audiences.models import EventStat

    convention = default_convention()
    return {
        "row_kinds": ROW_KINDS,
        "operators": OPERATORS,
        "audiences": Audience.objects.exclude(pk=audience.pk if audience else None).order_by("name"),
        "suppressions": Audience.objects.filter(purpose=Audience.SUPPRESSION).exclude(pk=audience.pk if audience else None).order_by("name"),
        "groups": PriorityGroup.objects.order_by("name"),
        "policies": IdentifierPolicy.objects.order_by("name"),
        "event_names": EventStat.objects.order_by().values_list("name", flat=True).distinct()[:200],
        "convention": convention,
    }


def _initial_state(audience: Audience | None) -> dict:
    if audience is None:
        return {"match": "all", "rows": [{"type": "did", "event": "", "within": "2h"}], "yaml": "", "rows_fit": True}
    shape = editor.rule_to_rows(audience.rule)
    return {
        "match": shape[0] if shape else "all", "rows": shape[1] if shape else [],
        "yaml": editor.rule_to_yaml(audience.rule), "rows_fit": shape is not None,
    }


def _form_data(post, audience: Audience | None) -> tuple[dict, list[str]]:
    data = {name: post.get(name, "").strip() for name in FORM_FIELDS}
    if audience:
        data["key"] = audience.key
    data["exclusions"] = post.getlist("exclusions")
    data["enabled"] = post.get("enabled") == "on"
    data["priority_group"] = data["priority_group"] or None
    data["identifier_policy"] = data["identifier_policy"] or None
    rank = data.pop("priority_rank")
    data["priority_rank"] = int(rank) if rank.isdigit() else (None if not rank else rank)
    problems = []
    try:
        data["rule"] = editor.yaml_to_rule(post.get("rule_yaml", ""))
    except ValueError as exc:
        problems.append(str(exc))
        data["rule"] = {}
    return data, problems


def _render(request, audience, state, *, data=None, errors=None, status=200):
    title = f"Edit {audience.name}" if audience else "New audience"
    return render(request, "dashboard/audience_form.html", {
        **dashboard_context(request), "title": title, "audience": audience, "state": state,
        "data": data or {}, "errors": errors or {}, **_choices(audience),
    }, status=status)


@permission_required("audiences.add_audience", raise_exception=True)
def audience_new(request):
    return _editor(request, None)


@permission_required("audiences.change_audience", raise_exception=True)
def audience_edit(request, key):
    return _editor(request, get_object_or_404(Audience, key=key))


def _editor(request, audience):
    if request.method != "POST":
        data = {}
        if audience:
            data = {name: getattr(audience, name) for name in ("key", "name", "description", "purpose", "cadence", "priority_rank", "enabled")}
            data.update(
                identifier_policy=audience.identifier_policy.key if audience.identifier_policy else "",
                priority_group=audience.priority_group.key if audience.priority_group else "",
                exclusions=list(audience.exclusions.values_list("key", flat=True)),
            )
        else:
            data = {"purpose": "activation", "cadence": "realtime", "enabled": True, "exclusions": []}
        return _render(request, audience, _initial_state(audience), data=data)
    data, problems = _form_data(request.POST, audience)
    state = json.loads(request.POST.get("state_json") or "{}") or _initial_state(audience)
    errors: dict[str, list[str]] = {"rule": problems} if problems else {}
    if not errors:
        try:
            saved = audience_save(data=data, actor=request.user, instance=audience)
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            messages.success(request, f"Saved {saved.name}. It is evaluated within a minute; realtime audiences follow every event.")
            return redirect("dashboard:audience", key=saved.key)
    return _render(request, audience, state, data=data, errors=errors, status=400)


@require_POST
def editor_preview(request):
    """The form (rows) or the YAML → the rule both ways, its problems, and the preview."""
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"errors": ["the editor sent something that is not JSON"]}, status=400)
    answer: dict = {"errors": []}
    try:
        if payload.get("source") == "yaml":
            rule = editor.yaml_to_rule(payload.get("yaml", ""))
            shape = editor.rule_to_rows(rule)
            answer["rows_fit"] = shape is not None
            if shape:
                answer["match"], answer["rows"] = shape
        else:
            rule = editor.rows_to_rule(payload.get("match", "all"), payload.get("rows") or [])
            answer["rows_fit"] = True
    except (ValueError, editor.RowError) as exc:
        return JsonResponse({"errors": [str(exc)], "rows_fit": payload.get("source") != "yaml"})
    answer["rule"] = rule
    answer["yaml"] = editor.rule_to_yaml(rule)
    answer["errors"] = editor.problems(rule)
    if not answer["errors"]:
        rank = payload.get("priority_rank")
        try:
            preview = audience_preview(
                rule=rule, exclusions=payload.get("exclusions") or [], priority_group=payload.get("priority_group") or None,
                priority_rank=int(rank) if str(rank or "").isdigit() else None,
                identifier_policy=payload.get("identifier_policy") or None, key=payload.get("key") or None,
            )
        except Exception as exc:  # a preview must never break the editor; the error is shown instead
            answer["errors"] = [f"the preview failed: {exc.__class__.__name__}: {exc}"]
        else:
            answer["preview"] = {
                "size": preview.size,
                "sample": [{"customer_id": p.customer_id, "email": p.email} for p in preview.sample],
                "overlaps": [{"key": o.key, "name": o.name, "purpose": o.purpose, "count": o.count, "share": o.share}
                             for o in preview.overlaps],
                "coverage": preview.coverage, "coverage_valid": preview.coverage_valid, "coverage_looked": preview.coverage_looked,
                "coverage_estimate": preview.coverage_is_estimate, "policy": preview.policy_name,
            }
    return JsonResponse(answer)


@require_GET
def editor_check_name(request):
    """The name against the naming convention, as it is typed."""
    name = request.GET.get("name", "").strip()
    convention = default_convention()
    if not name:
        return JsonResponse({"ok": False, "message": "A name is required."})
    clash = Audience.objects.filter(name=name).exclude(key=request.GET.get("key", "")).first()
    if clash:
        return JsonResponse({"ok": False, "message": f"{name!r} is already the name of {clash.key!r}."})
    if convention is None:
        return JsonResponse({"ok": True, "tokens": {}, "message": "No naming convention is set."})
    try:
        tokens = parse_name(convention, name)
    except ValidationError as exc:
        return JsonResponse({"ok": False, "message": exc.messages[0], "template": convention.template})
    return JsonResponse({"ok": True, "tokens": tokens, "message": "Follows the naming convention."})
