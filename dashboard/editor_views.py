"""The audience editor: rows for conditions, the YAML beside them, the name checked against the
convention as it is typed, and size, sample and overlap previewed as the form changes."""

from __future__ import annotations

import json
import logging

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from audiences.models import Audience, IdentifierPolicy, PriorityGroup
from audiences.naming import parse_name
from audiences.preview import audience_preview
from audiences.services import audience_save, default_convention

from . import editor
from .context import dashboard_context

log = logging.getLogger(__name__)

FORM_FIELDS = ("key", "name", "description", "purpose", "cadence", "identifier_policy", "priority_group", "priority_rank")
ROW_KINDS = [
    ("did", "did an event"),
    ("did_not", "did not do an event"),
    ("last_between", "last did an event between"),
    ("attribute", "has an attribute"),
    ("in_audience", "is in audience"),
    ("not_in_audience", "is not in audience"),
]
OPERATORS = [
    ("eq", "is"),
    ("ne", "is not"),
    ("gt", ">"),
    ("gte", "≥"),
    ("lt", "<"),
    ("lte", "≤"),
    ("in", "is one of"),
    ("contains", "contains"),
    ("exists", "exists"),
    ("older_than", "is older than"),
    ("newer_than", "is newer than"),
]


def _choices(audience=None) -> dict:
    from audiences.models import EventStat

    convention = default_convention()
    return {
        "row_kinds": ROW_KINDS,
        "operators": OPERATORS,
        "audiences": Audience.objects.exclude(pk=audience.pk if audience else None).order_by("name"),
        "suppressions": Audience.objects.filter(purpose=Audience.SUPPRESSION)
        .exclude(pk=audience.pk if audience else None)
        .order_by("name"),
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
        "match": shape[0] if shape else "all",
        "rows": shape[1] if shape else [],
        "yaml": editor.rule_to_yaml(audience.rule),
        "rows_fit": shape is not None,
    }


def _form_data(post, audience: Audience | None) -> tuple[dict, dict[str, list[str]]]:
    """The posted form as the service's data, and what is wrong with it before the service looks."""
    errors: dict[str, list[str]] = {}
    data = {name: post.get(name, "").strip() for name in FORM_FIELDS}
    if audience:
        data["key"] = audience.key
    data["exclusions"] = post.getlist("exclusions")
    data["enabled"] = post.get("enabled") == "on"
    data["priority_group"] = data["priority_group"] or None
    data["identifier_policy"] = data["identifier_policy"] or None
    data["priority_rank"] = editor.rank_value(data.pop("priority_rank"))
    try:
        data["rule"] = editor.yaml_to_rule(post.get("rule_yaml", ""))
    except ValueError as exc:
        errors.setdefault("rule", []).append(str(exc))
        data["rule"] = {}
    return data, errors


def _posted_state(post, audience, data) -> tuple[dict, str | None]:
    """The editor's state as the page posted it, or one rebuilt from the rule (and why)."""
    text = post.get("state_json", "")
    state = editor.form_state(text) if text else None
    if state is not None:
        return state, None
    rebuilt = _initial_state(None)
    shape = editor.rule_to_rows(data["rule"]) if data["rule"] else None
    if shape:
        rebuilt.update(match=shape[0], rows=shape[1])
    rebuilt.update(yaml=post.get("rule_yaml", ""), rows_fit=bool(shape) or not data["rule"])
    if not text:
        return rebuilt, None  # a page without JavaScript sends no state: the YAML box is the rule
    return rebuilt, "the editor's state (state_json) was not what the page sends; the form was rebuilt from the YAML"


# the form fields that show their own errors beside them; any other error is listed at the top
FIELDS_WITH_ERRORS_BESIDE = (
    "name",
    "key",
    "description",
    "rule",
    "exclusions",
    "priority_group",
    "priority_rank",
    "purpose",
    "cadence",
    "identifier_policy",
    "enabled",
)


def _render(request, audience, state, *, data=None, errors=None, status=200):
    title = f"Edit {audience.name}" if audience else "New audience"
    errors = errors or {}
    return render(
        request,
        "dashboard/audience_form.html",
        {
            **dashboard_context(request),
            "title": title,
            "audience": audience,
            "state": state,
            "data": data or {},
            "errors": errors,
            **_choices(audience),
            "other_errors": {field: messages for field, messages in errors.items() if field not in FIELDS_WITH_ERRORS_BESIDE},
        },
        status=status,
    )


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
            data = {
                name: getattr(audience, name)
                for name in ("key", "name", "description", "purpose", "cadence", "priority_rank", "enabled")
            }
            data.update(
                identifier_policy=audience.identifier_policy.key if audience.identifier_policy else "",
                priority_group=audience.priority_group.key if audience.priority_group else "",
                exclusions=list(audience.exclusions.values_list("key", flat=True)),
            )
        else:
            data = {"purpose": "activation", "cadence": "realtime", "enabled": True, "exclusions": []}
        return _render(request, audience, _initial_state(audience), data=data)
    data, errors = _form_data(request.POST, audience)
    state, state_problem = _posted_state(request.POST, audience, data)
    if state_problem:
        errors.setdefault("state_json", []).append(state_problem)
    if not errors:
        try:
            saved = audience_save(data=data, actor=request.user, instance=audience)
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            messages.success(
                request, f"Saved {saved.name}. It is evaluated within a minute; realtime audiences follow every event."
            )
            return redirect("dashboard:audience", key=saved.key)
    return _render(request, audience, state, data=data, errors=errors, status=400)


PREVIEW_FAILED = (
    "The preview could not be worked out for this rule, so it shows nothing. Check its numbers and texts; "
    "if the rule looks right, tell an administrator (the reason is in the server's log)."
)


@require_POST
def editor_preview(request):
    """The form (rows) or the YAML → the rule both ways, its problems, and the preview."""
    if request.content_type != "application/json":
        return JsonResponse({"errors": ["the preview takes a JSON body (Content-Type: application/json)"]}, status=400)
    try:
        payload = editor.preview_request(json.loads(request.body or b"{}"))
    except editor.RequestError as exc:
        return JsonResponse({"errors": [str(exc)]}, status=400)
    except (ValueError, RecursionError):
        return JsonResponse({"errors": ["the editor sent something that is not JSON"]}, status=400)
    answer: dict = {"errors": []}
    try:
        if payload["source"] == "yaml":
            rule = editor.yaml_to_rule(payload["yaml"])
            shape = editor.rule_to_rows(rule)
            answer["rows_fit"] = shape is not None
            if shape:
                answer["match"], answer["rows"] = shape
        else:
            rule = editor.rows_to_rule(payload["match"], payload["rows"])
            answer["rows_fit"] = True
    except (ValueError, editor.RowError) as exc:
        return JsonResponse({"errors": [str(exc)], "rows_fit": payload["source"] != "yaml"})
    answer["rule"] = rule
    answer["yaml"] = editor.rule_to_yaml(rule)
    answer["errors"] = editor.problems(rule)
    if not answer["errors"]:
        try:
            with transaction.atomic():  # a failed query must not spoil the rest of the request
                preview = audience_preview(
                    rule=rule,
                    exclusions=payload["exclusions"],
                    priority_group=payload["priority_group"],
                    priority_rank=payload["priority_rank"],
                    identifier_policy=payload["identifier_policy"],
                    key=payload["key"],
                )
        except Exception:  # a preview must never break the editor: a plain message here, the detail in the log
            log.exception("editor preview failed for rule %s", json.dumps(rule))
            answer["errors"] = [PREVIEW_FAILED]
        else:
            answer["preview"] = {
                "size": preview.size,
                "sample": [{"customer_id": p.customer_id, "email": p.email} for p in preview.sample],
                "overlaps": [
                    {"key": o.key, "name": o.name, "purpose": o.purpose, "count": o.count, "share": o.share}
                    for o in preview.overlaps
                ],
                "coverage": preview.coverage,
                "coverage_valid": preview.coverage_valid,
                "coverage_looked": preview.coverage_looked,
                "coverage_estimate": preview.coverage_is_estimate,
                "policy": preview.policy_name,
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
