"""Writes to audiences, naming conventions, identifier policies and priority groups.

One validation for every way in (admin, editor, config as code): each `*_save` takes plain
data (keys for related objects), raises ValidationError keyed by field with messages that say
what is wrong, and writes nothing half-way.
"""

from __future__ import annotations

import re

from croniter import croniter
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from . import rules as r
from .dependencies import dependencies, dependency_graph, find_cycle
from .models import Audience, IdentifierPolicy, NamingConvention, PriorityGroup
from .naming import parse_name, validate_convention

SLUG = re.compile(r"^[-a-z0-9_]{1,64}\Z")
MAX_RANK = 2_147_483_647  # the largest value of a PositiveIntegerField on every database
AUDIENCE_FIELDS = (
    "key",
    "name",
    "description",
    "purpose",
    "source_kind",
    "rule",
    "source_settings",
    "exclusions",
    "priority_group",
    "priority_rank",
    "cadence",
    "identifier_policy",
    "enabled",
    "owner",
)


def set_actor(instance, actor):
    instance._history_user = actor if getattr(actor, "is_authenticated", False) else None


def _slug_problem(value) -> str | None:
    if not isinstance(value, str) or not SLUG.match(value):
        return f"{value!r} is not a key: use lower-case letters, digits, - and _ (at most 64)"
    return None


RESERVED_KEYS = {"new", "editor"}  # the dashboard's own addresses beside /<key>/


def unknown_fields(data: dict, allowed) -> dict[str, list[str]]:
    """An error for each field of `data` that a service does not take, naming the ones it does."""
    expected = ", ".join(allowed if isinstance(allowed, (list, tuple)) else sorted(allowed))
    return {name: [f"unknown field; expected one of {expected}"] for name in sorted(set(data) - set(allowed))}


def key_problem(model, key, instance, label: str) -> str | None:
    """The stable key of a new or existing object: a slug, unique, and never changed.
    `label` names the kind with its article: "an audience", "a sync"."""
    if instance is not None and key != instance.key:
        return f"the key of {label.split(' ', 1)[1]} never changes; create a new one instead"
    if problem := _slug_problem(key):
        return problem
    if instance is None and key in RESERVED_KEYS:
        return f"{key!r} names a dashboard page ({key}/); choose another key"
    if instance is None and model.objects.filter(key=key).exists():
        return f"{label} with key {key!r} already exists"
    return None


def validate_cadence(value) -> str | None:
    if value == Audience.REALTIME or r.is_duration(value):
        return None
    if isinstance(value, str) and len(value.split()) == 5 and croniter.is_valid(value):
        return None
    return f"{value!r} is not a cadence: use realtime, an interval such as 15m, 2h, 1d, or a cron expression such as '0 * * * *'"


def default_convention() -> NamingConvention | None:
    return NamingConvention.objects.filter(is_default=True).first()


# --- audiences ------------------------------------------------------------------------------


def audience_clean(data: dict, *, instance: Audience | None = None) -> dict:
    """Validate audience data; returns it with related keys resolved to objects."""
    errors: dict[str, list[str]] = unknown_fields(data, AUDIENCE_FIELDS)

    def fail(name, message):
        errors.setdefault(name, []).append(message)

    clean = {k: v for k, v in data.items() if k in AUDIENCE_FIELDS}

    key = clean.get("key", instance.key if instance else None)
    if problem := key_problem(Audience, key, instance, "an audience"):
        fail("key", problem)

    name = clean.get("name", instance.name if instance else "")
    name_length = Audience._meta.get_field("name").max_length
    if not isinstance(name, str) or not name.strip():
        fail("name", "a name is required")
    elif len(name.strip()) > name_length:
        fail("name", f"at most {name_length} characters (this one has {len(name.strip())})")
    else:
        name = clean["name"] = name.strip()
        clash = Audience.objects.filter(name=name).exclude(pk=instance.pk if instance else None)
        if clash.exists():
            fail("name", f"{name!r} is already the name of audience {clash.first().key!r}")
        convention = default_convention()
        if convention:
            try:
                clean["name_tokens"] = parse_name(convention, name)
            except ValidationError as exc:
                fail("name", exc.messages[0])
        else:
            clean["name_tokens"] = {}

    purpose = clean.get("purpose", instance.purpose if instance else Audience.ACTIVATION)
    if not isinstance(purpose, str) or purpose not in dict(Audience.PURPOSE_CHOICES):
        fail("purpose", f"{purpose!r} is not a purpose: use activation or suppression")

    source_kind = clean.get("source_kind", instance.source_kind if instance else Audience.RULES)
    if not isinstance(source_kind, str) or source_kind not in dict(Audience.SOURCE_CHOICES):
        fail("source_kind", f"{source_kind!r} is not a source: use {' or '.join(dict(Audience.SOURCE_CHOICES))}")

    rule = clean.get("rule", instance.rule if instance else None)
    if source_kind == Audience.RULES:
        if not rule:
            fail("rule", "a rule is required, such as {event: 'Added to Cart', within: '2h'}")
        else:
            try:
                referenced = r.referenced_audiences(r.parse_rule(rule))
            except r.RuleError as exc:
                for path, message in exc.problems:
                    fail("rule", f"{path}: {message}" if path else message)
            else:
                existing = set(Audience.objects.filter(key__in=referenced).values_list("key", flat=True))
                for missing in sorted(referenced - existing - ({key} if key else set())):
                    fail("rule", f"in_audience: there is no audience {missing!r}")
                if key in referenced:
                    fail("rule", "in_audience: an audience cannot refer to itself")

    elif source_kind != Audience.RULES and isinstance(source_kind, str) and source_kind in dict(Audience.SOURCE_CHOICES):
        from .sources import SOURCES

        source = SOURCES.get(source_kind)
        settings_ = clean.get("source_settings", instance.source_settings if instance else {})
        if source is None:
            fail("source_kind", f"{source_kind} audiences need the sync side, which is not installed")
        else:
            for problem in source.validate(settings_):
                fail("source_settings", problem)
        if rule:
            fail("rule", f"a {source_kind} audience takes its members from the source; leave the rule out")
        cadence_value = clean.get("cadence", instance.cadence if instance else Audience.REALTIME)
        if cadence_value == Audience.REALTIME:
            fail("cadence", "a Customer.io segment is pulled on a schedule: use an interval such as 15m or a cron expression")

    exclusion_keys = clean.get("exclusions")
    if exclusion_keys is None:
        exclusion_keys = [a.key for a in instance.exclusions.all()] if instance else []
    if not isinstance(exclusion_keys, list) or not all(isinstance(k, str) for k in exclusion_keys):
        fail("exclusions", "must be a list of audience keys")
        exclusion_keys = []
    found = {a.key: a for a in Audience.objects.filter(key__in=exclusion_keys)}
    for excluded in exclusion_keys:
        if excluded == key:
            fail("exclusions", "an audience cannot exclude itself")
        elif excluded not in found:
            fail("exclusions", f"there is no audience {excluded!r}")
        elif found[excluded].purpose != Audience.SUPPRESSION:
            fail("exclusions", f"{excluded!r} is an activation audience; only suppression audiences can be excluded")
    clean["exclusions"] = [found[k] for k in exclusion_keys if k in found]

    group_key = clean.get("priority_group", instance.priority_group.key if instance and instance.priority_group else None)
    rank = clean.get("priority_rank", instance.priority_rank if instance else None)
    group = None
    if group_key:
        group = PriorityGroup.objects.filter(key=group_key).first()
        if not group:
            fail("priority_group", f"there is no priority group {group_key!r}")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
            fail("priority_rank", f"a rank from 1 to {MAX_RANK:,} is required in a priority group (1 is the highest)")
        elif group:
            taken = group.audiences.filter(priority_rank=rank).exclude(pk=instance.pk if instance else None).first()
            if taken:
                fail("priority_rank", f"rank {rank} in {group.key!r} is taken by {taken.key!r}")
    elif rank is not None and "priority_rank" in clean:
        fail("priority_rank", "a rank needs a priority group")
    clean["priority_group"] = group
    clean["priority_rank"] = rank if group_key else None

    cadence = clean.get("cadence", instance.cadence if instance else Audience.REALTIME)
    if problem := validate_cadence(cadence):
        fail("cadence", problem)

    policy_key = clean.get(
        "identifier_policy", instance.identifier_policy.key if instance and instance.identifier_policy else None
    )
    clean["identifier_policy"] = None
    if policy_key:
        clean["identifier_policy"] = IdentifierPolicy.objects.filter(key=policy_key).first()
        if not clean["identifier_policy"]:
            fail("identifier_policy", f"there is no identifier policy {policy_key!r}")

    owner = clean.get("owner")
    if "owner" in clean and owner is not None and not hasattr(owner, "pk"):
        clean["owner"] = get_user_model().objects.filter(username=owner).first()
        if not clean["owner"]:
            fail("owner", f"there is no user {owner!r}")

    if "enabled" in clean and not isinstance(clean["enabled"], bool):
        fail("enabled", "must be true or false")

    if not errors:
        cycle = _cycle_with(key, clean, instance)
        if cycle:
            fail("rule", "this would make a dependency cycle: " + " → ".join(cycle))
    if errors:
        raise ValidationError(errors)
    return clean


def _cycle_with(key, clean, instance) -> list[str] | None:
    graph = dependency_graph(Audience.objects.exclude(key=key).prefetch_related("exclusions"))
    candidate = instance or Audience(key=key)
    group = clean.get("priority_group")
    higher = (
        list(group.audiences.filter(priority_rank__lt=clean["priority_rank"]).exclude(key=key).values_list("key", flat=True))
        if group
        else []
    )
    lower = (
        list(group.audiences.filter(priority_rank__gt=clean["priority_rank"]).exclude(key=key).values_list("key", flat=True))
        if group
        else []
    )
    candidate.source_kind = clean.get("source_kind", candidate.source_kind)
    graph[key] = dependencies(
        candidate,
        rule=clean.get("rule", candidate.rule),
        exclusion_keys=[a.key for a in clean["exclusions"]],
        group_higher_keys=higher,
    )
    for lower_key in lower:
        graph.setdefault(lower_key, set()).add(key)
    return find_cycle(graph)


@transaction.atomic
def audience_save(*, data: dict, actor=None, instance: Audience | None = None) -> Audience:
    clean = audience_clean(data, instance=instance)
    exclusions = clean.pop("exclusions")
    audience = instance or Audience()
    for name, value in clean.items():
        setattr(audience, name, value)
    if not instance and actor is not None and "owner" not in data and getattr(actor, "is_authenticated", False):
        audience.owner = actor
    if instance and {"rule", "exclusions", "priority_group", "priority_rank", "source_kind", "cadence"} & set(data):
        audience.next_evaluation_at = None  # evaluate with the new definition at the next tick
    set_actor(audience, actor)
    audience.save()
    audience.exclusions.set(exclusions)
    return audience


@transaction.atomic
def audience_delete(*, audience: Audience, actor=None) -> None:
    dependants = [
        a.key for a in Audience.objects.exclude(pk=audience.pk).prefetch_related("exclusions") if audience.key in dependencies(a)
    ]
    if dependants:
        raise ValidationError(f"{audience.key!r} is used by {', '.join(sorted(dependants))}; change those first")
    set_actor(audience, actor)
    audience.delete()


@transaction.atomic
def setting_delete(*, instance, actor=None, used_by=None, what: str = "") -> None:
    """Delete a setting object (a naming convention, policy, group, workspace, destination or
    sync), its history recording who did; refused while `used_by` (a queryset of objects with a
    key) still holds any."""
    if used_by is not None and (keys := sorted(used_by.values_list("key", flat=True))):
        raise ValidationError(f"{what} {instance.key!r} is used by {', '.join(keys)}; change those first".strip())
    set_actor(instance, actor)
    instance.delete()


# --- naming conventions, identifier policies, priority groups -------------------------------


@transaction.atomic
def naming_convention_save(*, data: dict, actor=None, instance: NamingConvention | None = None):
    """Returns (convention, [(audience, why it no longer conforms)])."""
    errors = {}
    key = data.get("key", instance.key if instance else None)
    if problem := key_problem(NamingConvention, key, instance, "a naming convention"):
        errors["key"] = [problem]
    template = data.get("template", instance.template if instance else "")
    tokens = data.get("tokens", instance.tokens if instance else {})
    problems = validate_convention(template if isinstance(template, str) else "", tokens)
    for problem in problems:
        where, _, message = problem.partition(": ")
        field, _, inside = where.partition(".")
        errors.setdefault(field, []).append(f"{inside}: {message}" if inside else message)
    unknown = set(data) - {"key", "template", "tokens", "example", "is_default"}
    for name in unknown:
        errors.setdefault(name, []).append("unknown field; expected key, template, tokens, example, is_default")
    convention = instance or NamingConvention()
    convention.key, convention.template, convention.tokens = key, template, tokens
    convention.example = data.get("example", convention.example)
    convention.is_default = data.get("is_default", convention.is_default if instance else True)
    if not errors and convention.example:
        try:
            parse_name(convention, convention.example)
        except ValidationError as exc:
            errors.setdefault("example", []).append(exc.messages[0])
    if errors:
        raise ValidationError(errors)
    if convention.is_default:
        NamingConvention.objects.exclude(pk=convention.pk).filter(is_default=True).update(is_default=False)
    set_actor(convention, actor)
    convention.save()
    broken = []
    if convention.is_default:
        for audience in Audience.objects.order_by("key"):
            try:
                tokens_now = parse_name(convention, audience.name)
            except ValidationError as exc:
                broken.append((audience, exc.messages[0]))  # reported, never renamed or disabled
                continue
            if tokens_now != audience.name_tokens:
                Audience.objects.filter(pk=audience.pk).update(name_tokens=tokens_now)
    return convention, broken


@transaction.atomic
def identifier_policy_save(*, data: dict, actor=None, instance: IdentifierPolicy | None = None) -> IdentifierPolicy:
    import phonenumbers

    errors = {}
    key = data.get("key", instance.key if instance else None)
    if problem := key_problem(IdentifierPolicy, key, instance, "an identifier policy"):
        errors["key"] = [problem]
    policy = instance or IdentifierPolicy()
    policy.key = key
    policy.name = data.get("name", policy.name or key)
    policy.field = data.get("field", policy.field)
    policy.attribute = data.get("attribute", policy.attribute) or ""
    policy.default_region = data.get("default_region", policy.default_region or "US")
    policy.hash_sha256 = data.get("hash_sha256", policy.hash_sha256)
    if not isinstance(policy.field, str) or policy.field not in dict(IdentifierPolicy.FIELD_CHOICES):
        errors["field"] = [f"{policy.field!r} is not an identifier: use {', '.join(dict(IdentifierPolicy.FIELD_CHOICES))}"]
    elif policy.field == IdentifierPolicy.ATTRIBUTE and not (
        isinstance(policy.attribute, str) and r.KEY_NAME.match(policy.attribute)
    ):
        errors["attribute"] = ["name the attribute that holds the identifier (letters, digits, _ and -)"]
    elif policy.field != IdentifierPolicy.ATTRIBUTE and policy.attribute:
        errors["attribute"] = ["only an identifier of field 'attribute' names an attribute"]
    if not isinstance(policy.default_region, str) or policy.default_region not in phonenumbers.SUPPORTED_REGIONS:
        errors["default_region"] = [f"{policy.default_region!r} is not a region code such as US, GB, DE"]
    if not isinstance(policy.hash_sha256, bool):
        errors["hash_sha256"] = ["must be true or false"]
    unknown = set(data) - {"key", "name", "field", "attribute", "default_region", "hash_sha256"}
    for name in unknown:
        errors.setdefault(name, []).append("unknown field")
    if errors:
        raise ValidationError(errors)
    set_actor(policy, actor)
    policy.save()
    return policy


@transaction.atomic
def priority_group_save(*, data: dict, actor=None, instance: PriorityGroup | None = None) -> PriorityGroup:
    errors = {}
    key = data.get("key", instance.key if instance else None)
    if problem := key_problem(PriorityGroup, key, instance, "a priority group"):
        errors["key"] = [problem]
    unknown = set(data) - {"key", "name", "description"}
    for name in unknown:
        errors.setdefault(name, []).append("unknown field; expected key, name, description")
    if errors:
        raise ValidationError(errors)
    group = instance or PriorityGroup()
    group.key = key
    group.name = data.get("name", group.name or key)
    group.description = data.get("description", group.description)
    set_actor(group, actor)
    group.save()
    return group
