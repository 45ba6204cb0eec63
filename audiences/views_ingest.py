"""The ingest API: the Segment / Data Pipelines spec and the Customer.io Track API v1.

The only URLs that need no login; a write key (or site id and API key) is checked instead.
"""

import base64
import binascii
import functools

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from . import messages as wire
from .ingest import ingest_messages, person_erase, source_authenticate
from .models import ERASE, OUTCOMES, TRACK


def _credentials(request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), ""
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def unauthorized(message):
    response = JsonResponse(
        {"code": "unauthorized", "message": message, "errors": [{"index": None, "field": "", "message": message}]},
        status=401,
    )
    response["WWW-Authenticate"] = 'Basic realm="downstream-ingest"'
    return response


SCOPE_NEEDS = {
    TRACK: "send track, identify, page or screen messages",
    ERASE: "erase people",
    OUTCOMES: "report outcomes",
}


def missing_scope(source, scope: str):
    """None when the key carries `scope`; else the 403 to answer, before anything is read."""
    if source.has_scope(scope):
        return None
    message = (
        f"this write key may not {SCOPE_NEEDS[scope]}: it lacks the {scope!r} scope "
        f"(it has {', '.join(source.scopes) or 'none'}). Use a server key that carries {scope!r} "
        f"(`manage.py create_source NAME --scope {scope}`, or a superuser sets it on the source in the admin)"
    )
    return JsonResponse(
        {"code": "forbidden", "message": message, "errors": [{"index": None, "field": "", "message": message}]},
        status=403,
    )


def _rejected(exc: wire.Rejected):
    return JsonResponse(exc.as_json(), status=exc.status)


def _method_not_allowed(allowed):
    message = f"use {' or '.join(allowed)}"
    response = JsonResponse(
        {"code": "method_not_allowed", "message": message, "errors": [{"index": None, "field": "", "message": message}]},
        status=405,
    )
    response["Allow"] = ", ".join(allowed)
    return response


def read_body(request, max_bytes: int) -> object:
    """The body, as JSON; the limit holds for the bytes on the wire and again once inflated."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    too_big = wire.Rejected(413, [wire.Problem(None, "", wire.too_big("the body", max_bytes), True)])
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    raw = request.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_big
    return wire.decode_json_body(raw, content_encoding=request.headers.get("Content-Encoding", ""), max_bytes=max_bytes)


def ingest_endpoint(methods):
    """No login, no CSRF (machine clients), JSON errors, and never a 500 for bad input."""

    def decorate(view):
        @functools.wraps(view)
        @csrf_exempt
        @login_not_required
        def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                return _method_not_allowed(methods)
            try:
                return view(request, *args, **kwargs)
            except wire.Rejected as exc:
                return _rejected(exc)

        return wrapper

    return decorate


# --- Segment / Customer.io Data Pipelines ---------------------------------------------------


def segment_source(request):
    credentials = _credentials(request)
    if credentials is None:
        return None
    return source_authenticate(write_key=credentials[0])


def _segment_view(parse):
    @ingest_endpoint(["POST"])
    def view(request):
        source = segment_source(request)
        if source is None:
            return unauthorized("a valid write key is required as the Basic auth user name")
        if refused := missing_scope(source, TRACK):
            return refused
        now = timezone.now()
        body = read_body(request, settings.INGEST_MAX_BODY_BYTES)
        result = ingest_messages(source=source, messages=parse(body, now=now), received_at=now)
        return JsonResponse({"success": True, "accepted": result.accepted, "duplicates": result.duplicates})

    return view


batch = _segment_view(wire.parse_segment_batch)
track = _segment_view(functools.partial(wire.parse_segment_single, kind="track"))
identify = _segment_view(functools.partial(wire.parse_segment_single, kind="identify"))
page = _segment_view(functools.partial(wire.parse_segment_single, kind="page"))
screen = _segment_view(functools.partial(wire.parse_segment_single, kind="screen"))


# --- Customer.io Track API v1 ---------------------------------------------------------------


def _track_source(request):
    credentials = _credentials(request)
    if credentials is None or not credentials[1]:
        return None
    site_id, api_key = credentials
    return source_authenticate(write_key=api_key, name=site_id)


def _track_unauthorized():
    return unauthorized("Basic auth with your site id (the source name) and API key (its write key) is required")


@ingest_endpoint(["PUT", "DELETE"])
def track_customer(request, customer_id):
    source = _track_source(request)
    if source is None:
        return _track_unauthorized()
    if refused := missing_scope(source, ERASE if request.method == "DELETE" else TRACK):
        return refused
    customer_id = wire.parse_track_customer_id(customer_id)
    if request.method == "DELETE":
        person_erase(customer_id=customer_id, source=source)
        return JsonResponse({})
    now = timezone.now()
    body = read_body(request, settings.INGEST_MAX_MESSAGE_BYTES)
    ingest_messages(source=source, messages=[wire.parse_track_attributes(customer_id, body, now=now)], received_at=now)
    return JsonResponse({})


@ingest_endpoint(["POST", "PUT", "DELETE"])
def track_customer_event(request, customer_id):
    if request.method != "POST":  # the person's id itself ends in "/events"
        return track_customer(request, customer_id=f"{customer_id}/events")
    source = _track_source(request)
    if source is None:
        return _track_unauthorized()
    if refused := missing_scope(source, TRACK):
        return refused
    customer_id = wire.parse_track_customer_id(customer_id)
    now = timezone.now()
    body = read_body(request, settings.INGEST_MAX_MESSAGE_BYTES)
    ingest_messages(source=source, messages=[wire.parse_track_event(customer_id, body, now=now)], received_at=now)
    return JsonResponse({})
