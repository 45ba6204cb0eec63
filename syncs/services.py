"""Writes on the sync side: destinations, workspaces, syncs, holds, test cohorts.

Same habits as audiences.services: plain data in, ValidationError keyed by field out, nothing
half-written. Credentials arrive as values (admin form) or `env:NAME` references (config as
code); either way they are encrypted, and a reference is kept so exports never hold a value.
"""

from __future__ import annotations

import json
import os
import re

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audiences.models import Audience, IdentifierPolicy
from audiences.rules import KEY_NAME
from audiences.services import key_problem, set_actor, unknown_fields

from . import holdouts, removals
from .addresses import url_problem
from .alerts import alert_resolve
from .destinations.registry import KINDS, spec_for
from .models import CustomerIoWorkspace, Delivery, Destination, GlobalHoldout, RemovalHold, Sync
from .payload import PERSON_COLUMNS

KEEP = "keep"  # in a config file: leave the stored credential as it is
ENV = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")


def resolve_credentials(
    raw: dict, *, allowed, stored: dict, stored_refs: dict, errors: dict, field: str = "credentials", cleared: str = ""
):
    """{name: value | 'env:NAME' | 'keep'} → (values, refs). `cleared` says why nothing is
    stored any more (the endpoint moved), for the message a `keep` then gets."""
    values, refs = {}, {}
    if not isinstance(raw, dict):
        errors.setdefault(field, []).append("must be a mapping of credential names to env:NAME references")
        return values, refs
    for name, given in raw.items():
        if name not in allowed:
            errors.setdefault(field, []).append(f"{name}: unknown credential; expected {', '.join(allowed) or 'none'}")
            continue
        if given == KEEP:
            if cleared:
                errors.setdefault(field, []).append(f"{name}: 'keep' no longer holds: {cleared}; give it again as env:NAME")
                continue
            if name not in stored:
                errors.setdefault(field, []).append(f"{name}: 'keep' but nothing is stored yet; give env:NAME")
                continue
            values[name], refs[name] = stored[name], stored_refs.get(name, KEEP)
        elif isinstance(given, str) and (match := ENV.match(given)):
            if match.group(1) not in os.environ:
                errors.setdefault(field, []).append(f"{name}: the environment variable {match.group(1)} is not set")
                continue
            values[name], refs[name] = os.environ[match.group(1)], given
        elif isinstance(given, (str, dict)) and given:
            values[name], refs[name] = given, KEEP  # typed into a form: stored, never exported
        else:
            errors.setdefault(field, []).append(f"{name}: give a value or env:NAME")
    return values, refs


def credential_as_stored(spec, name: str, value):
    """A mapping credential (a webhook's secret headers) arrives as a mapping (admin form) or,
    through env:NAME, as the JSON text of one; the transport needs the mapping. None when it
    is neither."""
    credential = spec.credential(name)
    if not credential or credential.type != "mapping":
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()) else None


def _check_mapping_credentials(spec, values: dict, errors: dict) -> None:
    for name in list(values):
        stored = credential_as_stored(spec, name, values[name])
        if stored is None:
            errors.setdefault("credentials", []).append(
                f'{name}: give a JSON object of {spec.credential(name).keys} to texts, such as {{"Authorization": "Bearer ..."}}'
            )
        else:
            values[name] = stored


def set_numbers(obj, data: dict, errors: dict, ranges: dict, *, whole: bool = False) -> None:
    """Each named number from `data` (or as the object has it), checked against its range."""
    for name, (low, high) in ranges.items():
        value = data.get(name, getattr(obj, name))
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            kind = "a whole number" if whole else "a number"
            errors.setdefault(name, []).append(f"must be {kind} from {low:g} to {high:g}")
        else:
            setattr(obj, name, value if whole else float(value))


def destination_endpoint(kind: str, options: dict) -> str:
    """Where a destination's credentials travel: they belong to this URL and no other."""
    return spec_for(kind).endpoint(options)


def destination_endpoint_moved(instance: Destination | None, options: dict) -> bool:
    """Would saving `options` send the stored credentials somewhere else? Compared with what
    the database holds: a form or a failed save may already have changed the instance."""
    if instance is None or instance.pk is None:
        return False
    stored = Destination.objects.filter(pk=instance.pk).values_list("settings", flat=True).first() or {}
    return destination_endpoint(instance.kind, options) != destination_endpoint(instance.kind, stored)


def workspace_endpoint(region: str, base_url: str) -> str:
    from .customerio import HOSTS

    return (base_url or HOSTS.get(region, "")).strip().rstrip("/")


@transaction.atomic
def destination_save(*, data: dict, actor=None, instance: Destination | None = None) -> Destination:
    allowed = {
        "key",
        "name",
        "kind",
        "settings",
        "credentials",
        "batch_size",
        "rate_limit_per_s",
        "timeout_s",
        "max_attempts",
        "retry_base_s",
        "retry_cap_s",
        "concurrency",
    }
    errors: dict[str, list[str]] = unknown_fields(data, allowed)
    destination = instance or Destination()
    key = data.get("key", destination.key)
    if problem := key_problem(Destination, key, instance, "a destination"):
        errors.setdefault("key", []).append(problem)
    destination.key = key
    destination.name = data.get("name", destination.name or key)
    kind = data.get("kind", destination.kind)
    if kind not in KINDS:
        errors.setdefault("kind", []).append(f"{kind!r} is not a destination kind: use {', '.join(KINDS)}")
        kind = None
    elif instance and kind != instance.kind:
        errors.setdefault("kind", []).append("the kind of a destination never changes; create a new one")
    destination.kind = kind
    options = data.get("settings", destination.settings or {})
    if not isinstance(options, dict):
        errors.setdefault("settings", []).append("must be a mapping")
        options = {}
    spec = spec_for(kind) if kind else None
    if spec and (problems := spec.settings_problems(options, key=key)):
        errors.setdefault("settings", []).extend(problems)
    # credentials entered for one URL never follow the destination to another
    moved = bool(kind) and destination_endpoint_moved(instance, options)
    cleared = f"the {spec.endpoint_label()} changed, so the credentials stored for the old one were cleared" if moved else ""
    destination.settings = options
    if spec and not instance:  # what a new destination of this kind starts from
        data = {
            "batch_size": min(destination.batch_size, spec.max_batch),
            "rate_limit_per_s": spec.default_rate_limit_per_s,
            **data,
        }
    # a kind may take larger requests (Meta and Google: 10,000 rows)
    largest = max(5000, spec.max_batch) if spec else 5000
    set_numbers(
        destination, data, errors, {"batch_size": (1, largest), "max_attempts": (1, 50), "concurrency": (1, 16)}, whole=True
    )
    if spec and destination.batch_size > spec.max_batch:
        errors.setdefault("batch_size", []).append(f"{spec.label} takes at most {spec.max_batch} rows a request")
    set_numbers(
        destination,
        data,
        errors,
        {
            "rate_limit_per_s": (0.01, 1000),
            "timeout_s": (0.1, 120),
            "retry_base_s": (0.01, 600),
            "retry_cap_s": (0.1, 86400),
        },
    )
    if "credentials" in data and kind:
        values, refs = resolve_credentials(
            data["credentials"],
            allowed=[c.name for c in spec.credentials],
            stored=destination.credentials if instance and not moved else {},
            stored_refs=destination.credential_refs if instance and not moved else {},
            errors=errors,
            cleared=cleared,
        )
        _check_mapping_credentials(spec, values, errors)
    elif instance and not moved:
        values, refs = destination.credentials, destination.credential_refs
    else:
        values, refs = {}, {}
    if spec:
        for name in [c.name for c in spec.credentials if c.required]:
            if name not in values:
                errors.setdefault("credentials", []).append(
                    f"{name}: {cleared}: enter it again" if moved else f"{name}: required for {kind}"
                )
    if errors:
        raise ValidationError(errors)
    if values != (destination.credentials if instance else {}) or refs != (destination.credential_refs if instance else {}):
        destination.set_credentials(values, refs)
    set_actor(destination, actor)
    destination.save()
    return destination


@transaction.atomic
def workspace_save(*, data: dict, actor=None, instance: CustomerIoWorkspace | None = None) -> CustomerIoWorkspace:
    allowed = {"key", "name", "region", "base_url", "credentials", "rate_limit_per_s", "timeout_s"}
    errors: dict[str, list[str]] = unknown_fields(data, allowed)
    workspace = instance or CustomerIoWorkspace()
    key = data.get("key", workspace.key)
    if problem := key_problem(CustomerIoWorkspace, key, instance, "a workspace"):
        errors.setdefault("key", []).append(problem)
    workspace.key = key
    workspace.name = data.get("name", workspace.name or key)
    stored = CustomerIoWorkspace.objects.filter(pk=instance.pk).values("region", "base_url").first() if instance else None
    endpoint_before = workspace_endpoint(stored["region"], stored["base_url"]) if stored else ""
    workspace.region = data.get("region", workspace.region)
    if workspace.region not in ("us", "eu"):
        errors.setdefault("region", []).append("use us or eu")
    workspace.base_url = data.get("base_url", workspace.base_url) or ""
    if workspace.base_url and (problem := url_problem(workspace.base_url)):
        errors.setdefault("base_url", []).append(problem)
    set_numbers(workspace, data, errors, {"rate_limit_per_s": (0.1, 100), "timeout_s": (1, 300)})
    moved = bool(stored) and workspace_endpoint(workspace.region, workspace.base_url) != endpoint_before
    cleared = "the region or base URL changed, so the app key stored for the old host was cleared" if moved else ""
    values, refs = (workspace.credentials, workspace.credential_refs) if instance and not moved else ({}, {})
    if "credentials" in data:
        values, refs = resolve_credentials(
            data["credentials"], allowed=("app_key",), stored=values, stored_refs=refs, errors=errors, cleared=cleared
        )
    if "app_key" not in values:
        errors.setdefault("credentials", []).append(
            f"app_key: {cleared}: enter it again" if moved else "app_key: required (an App API key)"
        )
    if errors:
        raise ValidationError(errors)
    if not instance or values != workspace.credentials or refs != workspace.credential_refs:
        workspace.set_credentials(values, refs)
    set_actor(workspace, actor)
    workspace.save()
    return workspace


SYNC_FIELDS = {
    "key",
    "audience",
    "destination",
    "mode",
    "fields",
    "identifier_policy",
    "downstream_audience_id",
    "paused",
    "dry_run",
    "test_cohort_only",
    "removal_guard_share",
    "enabled",
    "owner",
    "timeout_s",
    "match_on",
    "additive_only",
    "holdout_share",
    "holdout_salt",
}


@transaction.atomic
def sync_save(*, data: dict, actor=None, instance: Sync | None = None) -> Sync:
    from django.contrib.auth import get_user_model

    errors: dict[str, list[str]] = unknown_fields(data, SYNC_FIELDS)
    sync = instance or Sync()
    was_dry_run = instance.dry_run if instance else None
    key = data.get("key", sync.key)
    if problem := key_problem(Sync, key, instance, "a sync"):
        errors.setdefault("key", []).append(problem)
    sync.key = key
    audience_key = data.get("audience", sync.audience.key if instance else None)
    audience = Audience.objects.filter(key=audience_key).first() if isinstance(audience_key, str) else None
    if not audience:
        errors.setdefault("audience", []).append(f"there is no audience {audience_key!r}")
    elif instance and audience.pk != instance.audience_id:
        errors.setdefault("audience", []).append("a sync's audience never changes; create a new sync")
    destination_key = data.get("destination", sync.destination.key if instance else None)
    destination = Destination.objects.filter(key=destination_key).first() if isinstance(destination_key, str) else None
    if not destination:
        errors.setdefault("destination", []).append(f"there is no destination {destination_key!r}")
    elif instance and destination.pk != instance.destination_id:
        errors.setdefault("destination", []).append("a sync's destination never changes; create a new sync")
    mode = data.get("mode", sync.mode)
    if mode not in dict(Sync.MODE_CHOICES):
        errors.setdefault("mode", []).append("use membership or events")
    elif destination and mode not in spec_for(destination.kind).modes:
        takes = [spec_for(kind).label for kind in KINDS if mode in spec_for(kind).modes]
        errors.setdefault("mode", []).append(f"{mode} mode is for {' and '.join(takes)} destinations")
    sync.mode = mode
    fields = data.get("fields", sync.fields)
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        errors.setdefault("fields", []).append("must be a list of attribute names")
    else:
        for name in fields:
            if name not in PERSON_COLUMNS and not KEY_NAME.match(name):
                errors.setdefault("fields", []).append(f"{name!r} is not an attribute name")
        if len(set(fields)) != len(fields):
            errors.setdefault("fields", []).append("a field is listed twice")
        sync.fields = fields
    policy_key = data.get("identifier_policy", sync.identifier_policy.key if instance and sync.identifier_policy else None)
    sync.identifier_policy = None
    if policy_key:
        sync.identifier_policy = IdentifierPolicy.objects.filter(key=policy_key).first() if isinstance(policy_key, str) else None
        if not sync.identifier_policy:
            errors.setdefault("identifier_policy", []).append(f"there is no identifier policy {policy_key!r}")
        elif destination and (problem := spec_for(destination.kind).identifier_problem(sync.identifier_policy)):
            errors.setdefault("identifier_policy", []).append(problem)
    match_on = data.get("match_on", sync.match_on)
    if not isinstance(match_on, list) or not all(isinstance(n, str) for n in match_on):
        errors.setdefault("match_on", []).append("must be a list of identifier names")
    else:
        if destination and (problems := spec_for(destination.kind).match_on_problems(match_on)):
            errors.setdefault("match_on", []).extend(problems)
        sync.match_on = match_on
    sync.downstream_audience_id = data.get("downstream_audience_id", sync.downstream_audience_id) or ""
    if not isinstance(sync.downstream_audience_id, str) or len(sync.downstream_audience_id) > 120:
        errors.setdefault("downstream_audience_id", []).append("must be a text of at most 120 characters")
    for name in ("paused", "dry_run", "test_cohort_only", "enabled", "additive_only"):
        value = data.get(name, getattr(sync, name))
        if not isinstance(value, bool):
            errors.setdefault(name, []).append("must be true or false")
        else:
            setattr(sync, name, value)
    share = data.get("removal_guard_share", sync.removal_guard_share)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        errors.setdefault("removal_guard_share", []).append("must be a share between 0 and 1, such as 0.3")
    else:
        sync.removal_guard_share = float(share)
    holdout_share = data.get("holdout_share", sync.holdout_share)
    if problem := holdouts.share_problem(holdout_share) or holdouts.suppression_problem(audience, holdout_share):
        errors.setdefault("holdout_share", []).append(problem)
    else:
        sync.holdout_share = float(holdout_share)
    holdout_salt = data.get("holdout_salt", sync.holdout_salt)
    if problem := holdouts.salt_problem(holdout_salt):
        errors.setdefault("holdout_salt", []).append(problem)
    else:
        sync.holdout_salt = holdout_salt
    if data.get("timeout_s", sync.timeout_s) is None:
        sync.timeout_s = None  # the default deadline: short for suppression, else the destination's
    else:
        set_numbers(sync, data, errors, {"timeout_s": (0.1, 120)})
    if "owner" in data:
        owner = data["owner"]
        sync.owner = get_user_model().objects.filter(username=owner).first() if owner else None
        if owner and not sync.owner:
            errors.setdefault("owner", []).append(f"there is no user {owner!r}")
    elif not instance and getattr(actor, "is_authenticated", False):
        sync.owner = actor
    if errors:
        raise ValidationError(errors)
    sync.audience, sync.destination = audience, destination
    set_actor(sync, actor)
    sync.save()
    from .outbox import queue_current_members

    if not instance:
        queue_current_members(sync)
    elif was_dry_run and not sync.dry_run:
        # going live: the dry run recorded the audience and sent nothing, so the first live run
        # starts from the audience as it is now (entries still waiting are replaced by it)
        sync.deliveries.pending().filter(action=Delivery.ENTER).update(
            state=Delivery.CANCELLED, last_error="replaced by the first live run"
        )
        queue_current_members(sync)
    return sync


def sync_go_live(*, sync: Sync, actor=None) -> Sync:
    """The explicit step out of dry run, recorded in the sync's history with its actor."""
    if not sync.dry_run:
        raise ValidationError({"dry_run": [f"{sync.key} is live already"]})
    return sync_save(data={"dry_run": False}, actor=actor, instance=sync)


@transaction.atomic
def global_holdout_save(*, data: dict, actor=None, instance: GlobalHoldout | None = None) -> GlobalHoldout:
    """The global paid holdout's share and salt: a setting change like any other, recorded with
    who made it. Like a sync's, it applies to people entering from then on."""
    allowed = {"key", "share", "salt"}
    errors: dict[str, list[str]] = unknown_fields(data, allowed)
    holdout = instance or holdouts.global_holdout()
    if data.get("key", GlobalHoldout.KEY) != GlobalHoldout.KEY:
        errors.setdefault("key", []).append(f"there is one global holdout, with the key {GlobalHoldout.KEY!r}")
    share = data.get("share", holdout.share)
    if problem := holdouts.share_problem(share):
        errors.setdefault("share", []).append(problem)
    salt = data.get("salt", holdout.salt)
    if problem := holdouts.salt_problem(salt):
        errors.setdefault("salt", []).append(problem)
    if errors:
        raise ValidationError(errors)
    holdout.share, holdout.salt = float(share), salt
    set_actor(holdout, actor)
    holdout.save()
    return holdout


@transaction.atomic
def sync_set_paused(*, sync: Sync, paused: bool, actor=None) -> Sync:
    sync.paused = paused
    set_actor(sync, actor)
    sync.save(update_fields=["paused", "updated_at"])
    if not paused:
        from .outbox import enqueue_delivery

        transaction.on_commit(lambda: enqueue_delivery([sync.destination_id]))
    return sync


@transaction.atomic
def hold_decide(*, hold: RemovalHold, approve: bool, actor=None) -> int:
    """Approve: the held removals are sent (those of a mass removal that would take the audience
    under the platform's minimum wait for it: syncs.removals). Discard: they are cancelled (the
    destination keeps those people). Either way the alert is resolved."""
    hold = RemovalHold.objects.select_for_update().get(pk=hold.pk)
    if hold.decision != RemovalHold.PENDING:
        raise ValidationError(f"this hold was already {hold.get_decision_display().lower()}")
    held = Delivery.objects.filter(hold=hold, state=Delivery.HELD)
    if approve:
        count = held.update(state=Delivery.PENDING, next_attempt_at=timezone.now())
    else:
        count = held.update(state=Delivery.CANCELLED, last_error=f"removal discarded by {actor or 'a person'}")
    hold.decision = RemovalHold.APPROVED if approve else RemovalHold.DISCARDED
    hold.decided_by = actor if getattr(actor, "is_authenticated", False) else None
    hold.decided_at = timezone.now()
    hold.save()
    alert_resolve(key=f"mass_removal:hold:{hold.pk}")
    removals.decided(hold, approve=approve, actor=actor)
    if approve:
        from .outbox import enqueue_delivery

        transaction.on_commit(lambda: enqueue_delivery([hold.sync.destination_id]))
    return count


@transaction.atomic
def sync_send_test_cohort(*, sync: Sync, actor=None) -> int:
    """Queue an entry for every internal test account currently in the audience, so a team can
    watch entry, exit and suppression end to end before launch."""
    now = timezone.now()
    memberships = sync.audience.memberships.current().filter(person__is_test=True).select_related("person")
    rows = [
        Delivery(
            sync=sync,
            person=m.person,
            customer_id=m.person.customer_id,
            action=Delivery.ENTER,
            triggered_at=now,
            changed_at=m.entered_at,
            next_attempt_at=now,
            initial=True,
        )
        for m in memberships
    ]
    Delivery.objects.bulk_create(rows)
    from .outbox import enqueue_delivery

    transaction.on_commit(lambda: enqueue_delivery([sync.destination_id]))
    return len(rows)
