"""POST /ingest/v1/outcomes: the feedback loop, with a write key that carries the `outcomes` scope."""

from django.conf import settings
from django.http import JsonResponse

from audiences.models import OUTCOMES
from audiences.views_ingest import ingest_endpoint, missing_scope, read_body, segment_source, unauthorized

from .outcomes import outcomes_record, parse_outcomes


@ingest_endpoint(["POST"])
def outcomes(request):
    source = segment_source(request)
    if source is None:
        return unauthorized("a valid write key is required as the Basic auth user name")
    if refused := missing_scope(source, OUTCOMES):
        return refused
    rows = parse_outcomes(read_body(request, settings.INGEST_MAX_BODY_BYTES))
    return JsonResponse({"success": True, "recorded": outcomes_record(source=source, rows=rows)})
