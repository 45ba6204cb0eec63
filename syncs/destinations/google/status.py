"""What Google made of a run's requests, read later on a schedule.

A 200 from :ingest or :remove only says the request was well formed; Google processes it
afterwards. Its diagnostics guide says to wait 30 minutes, then read
requestStatus:retrieve for each request id, backing off, until every destination is SUCCESS,
PARTIAL_SUCCESS or FAILED. Each Google run keeps its request ids in `details["request_ids"]`
(the first 20 a run made, as every list in a run's details); this writes
`details["request_status"]`: each request's outcome, and over the run the requests that
succeeded, partly succeeded, failed or are still processing, the records sent and failed
(by Google's processing error reason) and the match rate range Google gives for uploads.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from ...http import RateLimiter, TransportError

log = logging.getLogger(__name__)

KIND = "google"
FIRST_CHECK_AFTER = timedelta(minutes=30)
BACKOFF_CAP = timedelta(hours=6)
GIVE_UP_AFTER = timedelta(hours=48)
FINAL = ("SUCCESS", "PARTIAL_SUCCESS", "FAILED")
# a request id Google answers 400 INVALID_REQUEST_ID for: it will never have a status
UNKNOWN = "UNKNOWN_TO_GOOGLE"
# reads a tick makes at most: the whole project has 300 reads a minute
READS_PER_TICK = 100
MATCH_RATE_RANGES = {
    "MATCH_RATE_RANGE_LESS_THAN_20": (0, 20),
    "MATCH_RATE_RANGE_20_TO_30": (20, 30),
    "MATCH_RATE_RANGE_31_TO_40": (31, 40),
    "MATCH_RATE_RANGE_41_TO_50": (41, 50),
    "MATCH_RATE_RANGE_51_TO_60": (51, 60),
    "MATCH_RATE_RANGE_61_TO_70": (61, 70),
    "MATCH_RATE_RANGE_71_TO_80": (71, 80),
    "MATCH_RATE_RANGE_81_TO_90": (81, 90),
    "MATCH_RATE_RANGE_91_TO_100": (91, 100),
}


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def request_outcome(answer: dict) -> dict:
    """One RetrieveRequestStatusResponse, summed over its destinations (a Downstream request has
    one): status, kind, records, identifiers, failed records by reason, match rate range."""
    statuses = [s for s in answer.get("requestStatusPerDestination") or [] if isinstance(s, dict)]
    outcome = {"status": "REQUEST_STATUS_UNKNOWN", "records": 0, "identifiers": 0, "records_failed": 0, "errors": {}}
    names = [str(s.get("requestStatus") or "REQUEST_STATUS_UNKNOWN") for s in statuses]
    if names:
        if "PROCESSING" in names:
            outcome["status"] = "PROCESSING"
        elif len(set(names)) == 1:
            outcome["status"] = names[0]
        elif set(names) <= set(FINAL):
            outcome["status"] = "PARTIAL_SUCCESS"
    for status in statuses:
        if isinstance(ingest := status.get("audienceMembersIngestionStatus"), dict):
            outcome["kind"], data = "ingest", ingest.get("userDataIngestionStatus") or {}
        elif isinstance(removal := status.get("audienceMembersRemovalStatus"), dict):
            outcome["kind"], data = "remove", removal.get("userDataRemovalStatus") or {}
        else:
            data = {}
        outcome["records"] += _int(data.get("recordCount"))
        outcome["identifiers"] += _int(data.get("userIdentifierCount"))
        if data.get("uploadMatchRateRange") in MATCH_RATE_RANGES:
            outcome["match_rate_range"] = data["uploadMatchRateRange"]
        for count in (status.get("errorInfo") or {}).get("errorCounts") or []:
            if isinstance(count, dict):
                reason = str(count.get("reason") or "PROCESSING_ERROR_REASON_UNSPECIFIED")
                outcome["errors"][reason] = outcome["errors"].get(reason, 0) + _int(count.get("recordCount"))
                outcome["records_failed"] += _int(count.get("recordCount"))
    return outcome


def run_outcome(requests: dict) -> dict:
    """The run's figures over its requests' outcomes."""
    outcomes = list(requests.values())
    figures = {
        "succeeded": sum(o.get("status") == "SUCCESS" for o in outcomes),
        "partial": sum(o.get("status") == "PARTIAL_SUCCESS" for o in outcomes),
        "failed": sum(o.get("status") == "FAILED" for o in outcomes),
        "processing": sum(o.get("status") not in (*FINAL, UNKNOWN) for o in outcomes),
        "records": sum(o.get("records", 0) for o in outcomes),
        "records_failed": sum(o.get("records_failed", 0) for o in outcomes),
        "errors": {},
    }
    for outcome in outcomes:
        for reason, n in (outcome.get("errors") or {}).items():
            figures["errors"][reason] = figures["errors"].get(reason, 0) + n
    ranges = [o["match_rate_range"] for o in outcomes if o.get("match_rate_range") in MATCH_RATE_RANGES]
    if ranges:
        # the lowest range any upload of the run fell in: the one worth a look
        lowest = min(ranges, key=lambda r: MATCH_RATE_RANGES[r])
        low, high = MATCH_RATE_RANGES[lowest]
        figures["match_rate_range"] = lowest
        figures["match_rate"] = {"low": low / 100, "high": high / 100}
    return figures


def _due(state: dict, now: datetime) -> bool:
    next_check = state.get("next_check_at")
    return not next_check or datetime.fromisoformat(next_check) <= now


def check_request_statuses(*, now: datetime | None = None, reads: int = READS_PER_TICK, sleep=time.sleep) -> dict:
    """Read the status of the requests of finished Google runs that are due (30 minutes after
    the run, then backing off up to 6 hours between looks; given up after 48 hours), and write
    what Google says into each run's details."""
    from ...models import SyncRun
    from ..registry import transport_for

    now = now or timezone.now()
    runs = (
        SyncRun.objects.filter(
            sync__destination__kind=KIND, details__has_key="request_ids", finished_at__lte=now - FIRST_CHECK_AFTER
        )
        .filter(Q(details__request_status__isnull=True) | Q(details__request_status__done=False))
        .select_related("sync__destination")
        .order_by("finished_at")
    )
    summary = {"runs": 0, "reads": 0, "done": 0}
    transports, limiters, held = {}, {}, set()
    for run in runs:
        details = dict(run.details or {})
        state = dict(details.get("request_status") or {})
        destination = run.sync.destination
        if not _due(state, now) or destination.pk in held:
            continue
        if summary["reads"] >= reads:
            break
        if destination.pk not in transports:
            try:
                transports[destination.pk] = transport_for(destination)
            except TransportError as exc:
                log.warning("destination %s: %s", destination.key, exc)
                held.add(destination.pk)
                continue
        transport = transports[destination.pk]
        limiter = limiters.setdefault(destination.pk, RateLimiter(destination.rate_limit_per_s, sleep=sleep))
        outcomes = dict(state.get("requests") or {})
        state.pop("error", None)
        for request_id in details.get("request_ids") or []:
            if (outcomes.get(request_id) or {}).get("status") in (*FINAL, UNKNOWN) or summary["reads"] >= reads:
                continue
            limiter.wait()
            summary["reads"] += 1
            try:
                outcomes[request_id] = request_outcome(transport.request_status(request_id))
            except TransportError as exc:
                state["error"] = str(exc)
                if exc.status == 400:  # Google knows no status for it (INVALID_REQUEST_ID): nothing to wait for
                    outcomes[request_id] = {"status": UNKNOWN, "error": str(exc)}
                    continue
                if exc.retry_after is not None or exc.status == 429:
                    held.add(destination.pk)  # the quota is spent: the other runs wait for the next tick
                break
        checks = state.get("checks", 0) + 1
        finished = all((outcomes.get(r) or {}).get("status") in (*FINAL, UNKNOWN) for r in details.get("request_ids") or [])
        gave_up = not finished and now - run.finished_at >= GIVE_UP_AFTER
        state.update(
            run_outcome(outcomes), requests=outcomes, checks=checks, checked_at=now.isoformat(), done=finished or gave_up
        )
        if gave_up:
            state["gave_up"] = True
        state["next_check_at"] = (
            None if state["done"] else (now + min(FIRST_CHECK_AFTER * 2 ** (checks - 1), BACKOFF_CAP)).isoformat()
        )
        details["request_status"] = state
        SyncRun.objects.filter(pk=run.pk).update(details=details)
        summary["runs"] += 1
        summary["done"] += state["done"]
    return summary
