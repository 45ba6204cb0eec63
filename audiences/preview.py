"""Preview: what an audience would be right now, before it is saved."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db import models, transaction
from django.db.models import Count
from django.utils import timezone

from . import rules as r
from .compiler import audience_condition
from .identifiers import COVERAGE_SAMPLE, coverage, customer_id_policy
from .models import Audience, IdentifierPolicy, Membership, Person, PriorityGroup

SAMPLE_SIZE = 20
log = logging.getLogger(__name__)


@dataclass
class Overlap:
    key: str
    name: str
    purpose: str
    count: int
    share: float  # of the previewed audience


@dataclass
class Preview:
    size: int
    sample: list = field(default_factory=list)  # Person objects
    overlaps: list = field(default_factory=list)
    coverage_valid: int = 0
    coverage_looked: int = 0
    policy_name: str = ""

    @property
    def coverage(self) -> float | None:
        return self.coverage_valid / self.coverage_looked if self.coverage_looked else None

    @property
    def coverage_is_estimate(self) -> bool:
        return self.size > COVERAGE_SAMPLE


def preview_condition(*, rule, exclusions=(), priority_group=None, priority_rank=None, key=None, now=None):
    """A Q over people for an audience definition that need not be saved (validated rule)."""
    now = now or timezone.now()
    node = r.parse_rule(rule)
    exclusion_ids = list(Audience.objects.filter(key__in=list(exclusions)).values_list("pk", flat=True))
    higher_ids = []
    if priority_group and priority_rank:
        group = PriorityGroup.objects.filter(key=priority_group).first()
        if group:
            higher_ids = list(
                group.audiences.filter(priority_rank__lt=priority_rank, enabled=True)
                .exclude(key=key)
                .values_list("pk", flat=True)
            )
    stand_in = Audience(key=key or "__preview__")
    return audience_condition(stand_in, now, rule=node, exclusion_ids=exclusion_ids, higher_ids=higher_ids)


def audience_preview(
    *, rule, exclusions=(), priority_group=None, priority_rank=None, identifier_policy=None, key=None, now=None
) -> Preview:
    """Size now, 20 sample members (most recently active first), overlap with every other
    audience's current members, and identifier coverage under the chosen policy."""
    people = Person.objects.filter(
        preview_condition(
            rule=rule, exclusions=exclusions, priority_group=priority_group, priority_rank=priority_rank, key=key, now=now
        )
    )
    size = people.count()
    sample = list(people.order_by("-updated_at", "-pk")[:SAMPLE_SIZE])
    counts = dict(
        Membership.objects.current()
        .filter(person__in=people.values("pk"))
        .exclude(audience__key=key)
        .values_list("audience_id")
        .annotate(n=Count("pk"))
    )
    overlaps = [
        Overlap(a.key, a.name, a.purpose, counts.get(a.pk, 0), counts.get(a.pk, 0) / size if size else 0.0)
        for a in Audience.objects.exclude(key=key).order_by("key")
    ]
    overlaps.sort(key=lambda o: (-o.count, o.key))
    policy = IdentifierPolicy.objects.filter(key=identifier_policy).first() if identifier_policy else None
    policy = policy or customer_id_policy()
    valid, looked = coverage(policy, people.order_by("pk"))
    return Preview(
        size=size, sample=sample, overlaps=overlaps, coverage_valid=valid, coverage_looked=looked, policy_name=policy.name
    )


def saved_audience_preview(audience: Audience, *, now=None) -> tuple[Preview | None, str]:
    """The preview on a saved audience's page, or why there is none. A rule stored before rules
    were bounded, or a query that fails, is shown on the page instead of making it an error
    page; the savepoint keeps a failed query from spoiling the request's transaction."""
    if audience.source_kind != Audience.RULES:
        return None, ""
    try:
        with transaction.atomic():
            preview = audience_preview(
                rule=audience.rule or {"attribute": "__never__", "exists": True},
                exclusions=list(audience.exclusions.values_list("key", flat=True)),
                priority_group=audience.priority_group.key if audience.priority_group else None,
                priority_rank=audience.priority_rank,
                identifier_policy=audience.identifier_policy.key if audience.identifier_policy else None,
                key=audience.key,
                now=now,
            )
    except r.RuleError as exc:
        return None, f"rule: {exc}"
    except Exception:  # the page must render; the detail goes to the log
        log.exception("audience %s: the preview failed", audience.key)
        return None, "the preview query failed (the error is in the log)"
    return preview, ""


def audience_coverage(audience: Audience) -> tuple[int, int]:
    """Identifier coverage of an audience's current members under its own policy (sampled)."""
    policy = audience.identifier_policy or customer_id_policy()
    members = Person.objects.filter(memberships__audience=audience, memberships__exited_at__isnull=True).order_by("pk")
    return coverage(policy, members)


def refresh_coverage(audience: Audience, *, now=None) -> float | None:
    valid, looked = audience_coverage(audience)
    share = valid / looked if looked else None
    Audience.objects.filter(pk=audience.pk).update(identifier_coverage=share, coverage_checked_at=now or timezone.now())
    audience.identifier_coverage = share
    return share


def refresh_stale_coverage(*, older_than=None, limit: int = 20) -> int:
    """Audiences whose coverage was measured longest ago first, a few per run."""
    from datetime import timedelta

    now = timezone.now()
    cutoff = now - (older_than or timedelta(hours=1))
    stale = (
        Audience.objects.filter(enabled=True)
        .filter(models.Q(coverage_checked_at__isnull=True) | models.Q(coverage_checked_at__lt=cutoff))
        .order_by(models.F("coverage_checked_at").asc(nulls_first=True))[:limit]
    )
    count = 0
    for audience in stale:
        refresh_coverage(audience, now=now)
        count += 1
    return count
