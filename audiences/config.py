"""Configuration as code: one YAML file for naming conventions, identifier policies, priority
groups and audiences (the sync side adds destinations and syncs through `register_section`).

A file is declarative per section: every object listed is created or changed to match, and
objects of a section the file lists but that the file does not mention are deleted. A section
the file leaves out is left alone. `apply(..., check=True)` runs the very same writes inside
a transaction and rolls it back, so the plan it prints has been validated for real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from . import services
from .dependencies import DependencyCycle, dependencies_first, item_graph
from .models import Audience, IdentifierPolicy, NamingConvention, PriorityGroup


class ConfigError(Exception):
    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("\n".join(messages))


@dataclass
class Section:
    name: str
    model: type
    to_dict: Callable  # instance -> canonical dict (defaults omitted)
    save: Callable  # (data, instance|None, actor) -> instance; raises ValidationError
    delete: Callable  # (instance, actor) -> None
    defaults: dict = field(default_factory=dict)
    order_items: Callable | None = None  # items of the file -> items in the order to save
    # (wanted item, current item, key) -> names of fields that differ; the default compares the
    # two dicts. Sections with secrets compare what a reference resolves to, not only the text.
    differences: Callable | None = None
    # (the file's items, the section's planned changes) -> None: runs before the section's saves,
    # in the same transaction, to lift what would otherwise make the order of the saves matter
    before_save: Callable | None = None

    def canonical(self, item: dict) -> dict:
        return {**self.defaults, **item}

    def current(self) -> dict[str, dict]:
        return {obj.key: self.to_dict(obj) for obj in self.model.objects.order_by("key")}


SECTIONS: list[Section] = []


def register_section(section: Section, *, after: str | None = None) -> None:
    if any(s.name == section.name for s in SECTIONS):
        return
    if after is None:
        SECTIONS.append(section)
    else:
        position = next(i for i, s in enumerate(SECTIONS) if s.name == after)
        SECTIONS.insert(position + 1, section)


def without_defaults(data: dict, defaults: dict) -> dict:
    return {k: v for k, v in data.items() if k == "key" or defaults.get(k, object()) != v}


# --- the audiences side's sections ----------------------------------------------------------

CONVENTION_DEFAULTS = {"example": "", "is_default": False}
POLICY_DEFAULTS = {"attribute": "", "default_region": "US", "hash_sha256": False}
GROUP_DEFAULTS = {"description": ""}
AUDIENCE_DEFAULTS = {
    "description": "",
    "purpose": Audience.ACTIVATION,
    "source_kind": Audience.RULES,
    "rule": {},
    "source_settings": {},
    "exclusions": [],
    "priority_group": None,
    "priority_rank": None,
    "cadence": Audience.REALTIME,
    "identifier_policy": None,
    "enabled": True,
    "owner": None,
}


def convention_dict(c: NamingConvention) -> dict:
    data = {"key": c.key, "template": c.template, "tokens": c.tokens, "example": c.example, "is_default": c.is_default}
    return without_defaults(data, CONVENTION_DEFAULTS)


def policy_dict(p: IdentifierPolicy) -> dict:
    data = {
        "key": p.key,
        "name": p.name,
        "field": p.field,
        "attribute": p.attribute,
        "default_region": p.default_region,
        "hash_sha256": p.hash_sha256,
    }
    return without_defaults(data, POLICY_DEFAULTS)


def group_dict(g: PriorityGroup) -> dict:
    return without_defaults({"key": g.key, "name": g.name, "description": g.description}, GROUP_DEFAULTS)


def audience_dict(a: Audience) -> dict:
    data = {
        "key": a.key,
        "name": a.name,
        "description": a.description,
        "purpose": a.purpose,
        "source_kind": a.source_kind,
        "rule": a.rule,
        "source_settings": a.source_settings,
        "exclusions": sorted(x.key for x in a.exclusions.all()),
        "priority_group": a.priority_group.key if a.priority_group else None,
        "priority_rank": a.priority_rank,
        "cadence": a.cadence,
        "identifier_policy": a.identifier_policy.key if a.identifier_policy else None,
        "enabled": a.enabled,
        "owner": a.owner.username if a.owner else None,
    }
    return without_defaults(data, AUDIENCE_DEFAULTS)


def _order_audience_items(items: list[dict]) -> list[dict]:
    """Dependencies first, so that an audience can exclude one created by the same file."""
    by_key = {i["key"]: i for i in items}
    return [by_key[k] for k in dependencies_first(item_graph(by_key))]  # a cycle raises DependencyCycle, reported by _write


def _save_audience(data, instance, actor):
    return services.audience_save(data=data, instance=instance, actor=actor)


def _delete_audience(instance, actor):
    services.audience_delete(audience=instance, actor=actor)


def _delete_unused(instance, actor):
    """Policies and groups: refuse while audiences use them, as the file would then not match
    the database (a group's audiences silently lost it; a policy's deletion was a ProtectedError)."""
    services.setting_delete(instance=instance, actor=actor, used_by=instance.audiences.all())


register_section(
    Section(
        "naming_conventions",
        NamingConvention,
        convention_dict,
        lambda data, instance, actor: services.naming_convention_save(data=data, instance=instance, actor=actor)[0],
        lambda instance, actor: services.setting_delete(instance=instance, actor=actor),
        CONVENTION_DEFAULTS,
    )
)
register_section(
    Section(
        "identifier_policies",
        IdentifierPolicy,
        policy_dict,
        lambda data, instance, actor: services.identifier_policy_save(data=data, instance=instance, actor=actor),
        _delete_unused,
        POLICY_DEFAULTS,
    )
)
register_section(
    Section(
        "priority_groups",
        PriorityGroup,
        group_dict,
        lambda data, instance, actor: services.priority_group_save(data=data, instance=instance, actor=actor),
        _delete_unused,
        GROUP_DEFAULTS,
    )
)


def _release_ranks(items: list[dict], changes: list[Change]) -> None:
    """A file may swap two audiences' ranks in a group, or give a leaving audience's rank to
    another: whichever is saved first would find its rank taken. Those ranks are let go first
    (in the apply's transaction); each save then claims its own, and a rank that two audiences
    of the file want is still refused by the second save."""
    moving = {c.key for c in changes if c.action == "change" and {"priority_group", "priority_rank"} & set(c.fields)}
    leaving = {c.key for c in changes if c.action == "delete"}
    wanted = {(i.get("priority_group"), i.get("priority_rank")) for i in items if i.get("priority_group")}
    leaving_in_the_way = [
        a.pk
        for a in Audience.objects.filter(key__in=leaving, priority_group__isnull=False).select_related("priority_group")
        if (a.priority_group.key, a.priority_rank) in wanted
    ]
    Audience.objects.filter(Q(key__in=moving, priority_group__isnull=False) | Q(pk__in=leaving_in_the_way)).update(
        priority_rank=None
    )


register_section(
    Section(
        "audiences",
        Audience,
        audience_dict,
        _save_audience,
        _delete_audience,
        AUDIENCE_DEFAULTS,
        order_items=lambda items: _order_audience_items(items),
        before_save=_release_ranks,
    )
)


# --- plan and apply -------------------------------------------------------------------------


@dataclass
class Change:
    section: str
    key: str
    action: str  # create, change, delete
    fields: list[str] = field(default_factory=list)

    def __str__(self):
        detail = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.action:6s} {self.section}.{self.key}{detail}"


def load_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"])
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError([f"{path}: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"])
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"])
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections such as audiences:"])
    return data


def _items(path: str, data: dict) -> dict[str, list[dict]]:
    problems = []
    known = {s.name for s in SECTIONS}
    for name in data:
        if name not in known:
            problems.append(f"{path}: {name}: unknown section; expected {', '.join(sorted(known))}")
    found = {}
    for section in SECTIONS:
        if section.name not in data:
            continue
        items = data[section.name] or []
        if not isinstance(items, list):
            problems.append(f"{path}: {section.name}: must be a list")
            continue
        seen = set()
        for position, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                problems.append(f"{path}: {section.name}[{position}]: each entry needs a key")
                continue
            if item["key"] in seen:
                problems.append(f"{path}: {section.name}[{item['key']}]: listed twice")
            seen.add(item["key"])
        found[section.name] = [i for i in items if isinstance(i, dict) and isinstance(i.get("key"), str)]
    if problems:
        raise ConfigError(problems)
    return found


def plan(path: str, data: dict) -> list[Change]:
    changes = []
    for section in SECTIONS:
        items = _items(path, data).get(section.name)
        if items is None:
            continue
        current = section.current()
        wanted = {i["key"]: section.canonical(i) for i in items}
        for key, item in wanted.items():
            if key not in current:
                changes.append(Change(section.name, key, "create"))
                continue
            have = section.canonical(current[key])
            if section.differences:
                differing = sorted(section.differences(item, have, key))
            else:
                differing = plain_differences(item, have)
            if differing:
                changes.append(Change(section.name, key, "change", differing))
        leaving = [item for key, item in current.items() if key not in wanted]
        if section.order_items:
            leaving = section.order_items(leaving)  # dependencies first: _write deletes in reverse
        for item in leaving:
            changes.append(Change(section.name, item["key"], "delete"))
    return changes


def plain_differences(item: dict, have: dict, *, skip=()) -> list[str]:
    return sorted(k for k in set(item) | set(have) if k not in skip and _normal(item.get(k)) != _normal(have.get(k)))


def _normal(value):
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items())}
    return value


class _Rollback(Exception):
    pass


def apply(path: str, *, check: bool = False, actor=None) -> list[Change]:
    """Apply the file (or, with check, validate it and roll back). Returns the plan."""
    data = load_file(path)
    changes = plan(path, data)
    items = _items(path, data)
    try:
        with transaction.atomic():
            _write(path, items, changes, actor)
            if check:
                raise _Rollback
    except _Rollback:
        pass
    return changes


def _write(path, items, changes, actor):
    errors = []
    by_section = {s.name: s for s in SECTIONS}
    touched = {(c.section, c.key) for c in changes if c.action in ("create", "change")}
    for section in SECTIONS:
        if section.name not in items:
            continue
        try:
            ordered = section.order_items(items[section.name]) if section.order_items else items[section.name]
        except DependencyCycle as cycle:
            # Validation of one audience at a time cannot see a cycle among audiences the file creates.
            errors.append(
                f"{path}: {section.name}[{cycle.keys[0]}]: this would make a dependency cycle: {' → '.join(cycle.keys)}"
            )
            continue
        if section.before_save:
            section.before_save(items[section.name], [c for c in changes if c.section == section.name])
        for item in ordered:
            if (section.name, item["key"]) not in touched:
                continue
            instance = section.model.objects.filter(key=item["key"]).first()
            try:
                with transaction.atomic():
                    section.save(section.canonical(item), instance, actor)
            except ValidationError as exc:
                errors += _messages(path, section.name, item["key"], exc)
    for change in reversed([c for c in changes if c.action == "delete"]):
        section = by_section[change.section]
        try:
            with transaction.atomic():
                section.delete(section.model.objects.get(key=change.key), actor)
        except ValidationError as exc:
            errors += _messages(path, change.section, change.key, exc)
    if errors:
        raise ConfigError(errors)


def _messages(path, section, key, exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [f"{path}: {section}[{key}].{name}: {m}" for name, ms in exc.message_dict.items() for m in ms]
    return [f"{path}: {section}[{key}]: {m}" for m in exc.messages]


def export() -> dict:
    return {section.name: list(section.current().values()) for section in SECTIONS}


def export_yaml() -> str:
    return yaml.safe_dump(export(), sort_keys=False, allow_unicode=True, width=110)
