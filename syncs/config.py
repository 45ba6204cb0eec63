"""Destinations, Customer.io workspaces and syncs in the configuration file. Credentials are
exported as their `env:NAME` references (or `keep` when typed into a form), never as values."""

import os

from audiences.config import Section, plain_differences, register_section, without_defaults
from audiences.services import setting_delete

from . import services
from .destinations.registry import KINDS, spec_for
from .models import CustomerIoWorkspace, Destination, GlobalHoldout, Sync

DESTINATION_DEFAULTS = {
    "settings": {},
    "credentials": {},
    "batch_size": 500,
    "rate_limit_per_s": 10.0,
    "timeout_s": 10.0,
    "max_attempts": 8,
    "retry_base_s": 2.0,
    "retry_cap_s": 300.0,
    "concurrency": 4,
}


def destination_defaults(kind) -> dict:
    """What a destination of this kind starts from: its spec's batch size and rate limit."""
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if not spec:
        return DESTINATION_DEFAULTS
    return {
        **DESTINATION_DEFAULTS,
        "batch_size": min(DESTINATION_DEFAULTS["batch_size"], spec.max_batch),
        "rate_limit_per_s": spec.default_rate_limit_per_s,
    }


class DestinationSection(Section):
    def canonical(self, item: dict) -> dict:
        return {**destination_defaults(item.get("kind")), **item}


WORKSPACE_DEFAULTS = {"region": "us", "base_url": "", "rate_limit_per_s": 10.0, "timeout_s": 30.0, "credentials": {}}
SYNC_DEFAULTS = {
    "mode": Sync.MEMBERSHIP,
    "fields": [],
    "identifier_policy": None,
    "downstream_audience_id": "",
    "paused": False,
    "dry_run": False,
    "test_cohort_only": False,
    "removal_guard_share": 0.3,
    "enabled": True,
    "owner": None,
    "timeout_s": None,
    "match_on": [],
    "additive_only": False,
    "holdout_share": 0.0,
    "holdout_salt": "",
}
HOLDOUT_DEFAULTS = {"share": 0.0, "salt": ""}


def _refs(obj) -> dict:
    return {name: obj.credential_refs.get(name, services.KEEP) for name in obj.credential_names()}


def destination_dict(d: Destination) -> dict:
    data = {
        "key": d.key,
        "name": d.name,
        "kind": d.kind,
        "settings": d.settings,
        "credentials": _refs(d),
        "batch_size": d.batch_size,
        "rate_limit_per_s": d.rate_limit_per_s,
        "timeout_s": d.timeout_s,
        "max_attempts": d.max_attempts,
        "retry_base_s": d.retry_base_s,
        "retry_cap_s": d.retry_cap_s,
        "concurrency": d.concurrency,
    }
    return without_defaults(data, destination_defaults(d.kind))


def workspace_dict(w: CustomerIoWorkspace) -> dict:
    data = {
        "key": w.key,
        "name": w.name,
        "region": w.region,
        "base_url": w.base_url,
        "rate_limit_per_s": w.rate_limit_per_s,
        "timeout_s": w.timeout_s,
        "credentials": _refs(w),
    }
    return without_defaults(data, WORKSPACE_DEFAULTS)


def sync_dict(s: Sync) -> dict:
    data = {
        "key": s.key,
        "audience": s.audience.key,
        "destination": s.destination.key,
        "mode": s.mode,
        "fields": s.fields,
        "identifier_policy": s.identifier_policy.key if s.identifier_policy else None,
        "downstream_audience_id": s.downstream_audience_id,
        "paused": s.paused,
        "dry_run": s.dry_run,
        "test_cohort_only": s.test_cohort_only,
        "removal_guard_share": s.removal_guard_share,
        "enabled": s.enabled,
        "owner": s.owner.username if s.owner else None,
        "timeout_s": s.timeout_s,
        "match_on": s.match_on,
        "additive_only": s.additive_only,
        "holdout_share": s.holdout_share,
        "holdout_salt": s.holdout_salt,
    }
    return without_defaults(data, SYNC_DEFAULTS)


def holdout_dict(h: GlobalHoldout) -> dict:
    return without_defaults({"key": h.key, "share": h.share, "salt": h.salt}, HOLDOUT_DEFAULTS)


class HoldoutSection(Section):
    """The one global holdout row always exists; while it is off, the file has nothing to say."""

    def current(self) -> dict[str, dict]:
        return {key: item for key, item in super().current().items() if item != {"key": key}}


def _references_only(data: dict) -> dict:
    """A configuration file names its secrets (env:NAME) or keeps the stored ones; a value
    written into the file itself would end up in version control."""
    from django.core.exceptions import ValidationError

    credentials = data.get("credentials")
    if isinstance(credentials, dict):
        literal = sorted(
            name
            for name, given in credentials.items()
            if not (given == services.KEEP or (isinstance(given, str) and services.ENV.match(given)))
        )
        if literal:
            raise ValidationError(
                {
                    "credentials": [
                        f"{name}: a configuration file holds env:NAME or keep, never the secret itself" for name in literal
                    ]
                }
            )
    return data


def credential_differences(model):
    """A credential differs when the file names another reference, when the environment
    variable it names now holds another value (a rotated secret), or when it is added or
    dropped; `keep` equals whatever is stored."""

    def differences(item: dict, have: dict, key: str) -> list[str]:
        found = plain_differences(item, have, skip=("credentials",))
        wanted, stored_refs = item.get("credentials") or {}, have.get("credentials") or {}
        if not isinstance(wanted, dict):
            return found + ["credentials"]
        obj = model.objects.get(key=key)
        stored = obj.credentials
        for name in set(wanted) | set(stored_refs):
            given = wanted.get(name)
            if given == services.KEEP and name in stored:
                continue
            if given is None or given != stored_refs.get(name):
                return found + ["credentials"]
            match = services.ENV.match(given) if isinstance(given, str) else None
            if (
                match
                and os.environ.get(match.group(1)) is not None
                and _as_stored(obj, name, os.environ[match.group(1)]) != stored.get(name)
            ):
                return found + ["credentials"]
        return found

    return differences


def _as_stored(obj, name: str, value: str):
    """The value as the service would store it (a mapping credential is parsed from its JSON)."""
    if not isinstance(obj, Destination):
        return value
    stored = services.credential_as_stored(spec_for(obj.kind), name, value)
    return value if stored is None else stored


def register():
    register_section(
        Section(
            "customerio_workspaces",
            CustomerIoWorkspace,
            workspace_dict,
            lambda data, instance, actor: services.workspace_save(data=_references_only(data), instance=instance, actor=actor),
            lambda instance, actor: setting_delete(instance=instance, actor=actor),
            WORKSPACE_DEFAULTS,
            differences=credential_differences(CustomerIoWorkspace),
        ),
        after="identifier_policies",
    )
    register_section(
        DestinationSection(
            "destinations",
            Destination,
            destination_dict,
            lambda data, instance, actor: services.destination_save(data=_references_only(data), instance=instance, actor=actor),
            lambda instance, actor: setting_delete(
                instance=instance, actor=actor, used_by=instance.syncs.all(), what="destination"
            ),
            DESTINATION_DEFAULTS,
            differences=credential_differences(Destination),
        )
    )
    # the global paid holdout: one entry, key `global`; leaving it out of a listed section turns it off
    register_section(
        HoldoutSection(
            "holdouts",
            GlobalHoldout,
            holdout_dict,
            lambda data, instance, actor: services.global_holdout_save(data=data, instance=instance, actor=actor),
            lambda instance, actor: services.global_holdout_save(data=HOLDOUT_DEFAULTS, instance=instance, actor=actor),
            HOLDOUT_DEFAULTS,
        )
    )
    register_section(
        Section(
            "syncs",
            Sync,
            sync_dict,
            lambda data, instance, actor: services.sync_save(data=data, instance=instance, actor=actor),
            lambda instance, actor: setting_delete(instance=instance, actor=actor),
            SYNC_DEFAULTS,
        )
    )
