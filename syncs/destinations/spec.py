"""What a destination kind declares about itself, read by the model, the services, the
dashboard's editors and config as code: one `DestinationSpec` per kind, exported as `SPEC` by
its package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MEMBERSHIP, EVENTS = "membership", "events"


@dataclass(frozen=True)
class Setting:
    """One non-secret setting. `type` is text, url, choice or mapping (of names to texts);
    an `endpoint` setting names where the credentials travel, so changing it clears them."""

    name: str
    label: str
    type: str = "text"
    required: bool = False
    default: object = None
    help: str = ""
    choices: tuple[str, ...] = ()
    endpoint: bool = False

    def problem(self, value) -> str | None:
        from ..addresses import url_problem

        if value in (None, ""):
            return None  # `required` is judged with the other settings
        if self.type in ("text", "url", "choice") and not isinstance(value, str):
            return f"{self.name}: must be a text"
        if self.type == "url":
            return url_problem(value)
        if self.type == "choice" and value not in self.choices:
            return f"{self.name}: use {' or '.join(self.choices)}"
        if self.type == "mapping" and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            return f"{self.name}: must be a mapping of {self.label} to texts"
        return None


def base_url(default: str, help: str) -> Setting:
    """The address of a kind's API: an endpoint setting, so the credentials entered for it go
    nowhere else."""
    return Setting(
        "base_url",
        "base URL",
        type="url",
        default=default,
        endpoint=True,
        help=help,
    )


@dataclass(frozen=True)
class Credential:
    """One write-only secret: stored encrypted, never shown again. A `mapping` credential is a
    JSON object of names to texts (typed as JSON, or the JSON text of an env:NAME)."""

    name: str
    label: str
    required: bool = False
    type: str = "text"
    keys: str = "names"  # what a mapping credential's keys are, for its message


@dataclass(frozen=True)
class MatchKey:
    """One identifier a platform matches people on, made from one person the platform's own
    way: `source` is a person column (email, phone, customer_id, cio_id) or `attribute:NAME`;
    `normalize` takes the raw value and gives the platform's form (or None: not usable);
    `hashed` sends the SHA-256 hex of that form. A row carries every key the sync maps."""

    name: str
    label: str
    source: str
    normalize: Callable[[object], str | None] = field(compare=False)
    hashed: bool = True

    def raw(self, person):
        if self.source.startswith("attribute:"):
            return (person.attributes or {}).get(self.source.split(":", 1)[1])
        if self.source == "phone":
            return person.phone_e164 or person.phone
        return getattr(person, self.source, None)

    def compile(self, person) -> str | None:
        from audiences.identifiers import sha256

        raw = self.raw(person)
        if raw is None or raw == "":
            return None
        value = self.normalize(raw)
        if not value:
            return None
        return sha256(value) if self.hashed else value


@dataclass(frozen=True)
class DestinationSpec:
    kind: str
    label: str
    transport: type
    settings: tuple[Setting, ...] = ()
    credentials: tuple[Credential, ...] = ()
    modes: tuple[str, ...] = (MEMBERSHIP,)
    # identifier policy fields it can use (None: any) and whether it takes SHA-256 hashes
    identifiers: tuple[str, ...] | None = None
    hashes: bool = True
    identifier_hint: str = ""
    max_batch: int = 5000
    default_rate_limit_per_s: float = 10.0
    removes: bool = True
    min_audience_size: int | None = None
    # an ad platform whose audiences are bought against: the global paid holdout covers its syncs
    paid_media: bool = False
    # the platform's own identifiers, several per person (Meta's schema, Google's
    # userIdentifiers); a kind with match keys ignores the identifier policy
    match_keys: tuple[MatchKey, ...] = ()
    # further checks of the settings as a whole: (settings, destination key) → messages
    check: Callable[[dict, str], list[str]] | None = field(default=None, compare=False)

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)

    def credential(self, name: str) -> Credential | None:
        return next((c for c in self.credentials if c.name == name), None)

    def match_key(self, name: str) -> MatchKey | None:
        return next((k for k in self.match_keys if k.name == name), None)

    def keys_for(self, sync) -> tuple[MatchKey, ...]:
        """The match keys a sync sends: its `match_on` names, or every key the kind offers."""
        chosen = [n for n in (sync.match_on or []) if self.match_key(n)]
        return tuple(k for k in self.match_keys if k.name in chosen) if chosen else self.match_keys

    def identifiers_for(self, sync, person) -> dict[str, str]:
        return {k.name: v for k in self.keys_for(sync) if (v := k.compile(person))}

    def match_on_problems(self, names) -> list[str]:
        if not names:
            return []
        if not self.match_keys:
            return [f"match_on: {self.label} matches on the identifier policy, not on match keys"]
        known = [k.name for k in self.match_keys]
        return [
            f"match_on: {name!r} is not an identifier {self.label} takes; use {', '.join(known)}"
            for name in names
            if name not in known
        ]

    def settings_problems(self, options: dict, *, key: str) -> list[str]:
        known = [s.name for s in self.settings]
        problems = [
            f"{name}: unknown setting for {self.kind}; expected {', '.join(known) or 'none'}"
            for name in sorted(set(options) - set(known))
        ]
        for setting in self.settings:
            if setting.required and options.get(setting.name) in (None, ""):
                problems.append(f"{setting.name}: required for {self.kind}")
            elif problem := setting.problem(options.get(setting.name)):
                problems.append(problem)
        if self.check:
            problems += self.check(options, key)
        return problems

    def endpoint(self, options: dict) -> str:
        """Where the credentials travel: they belong to this address and no other."""
        options = options if isinstance(options, dict) else {}
        return " ".join(str(options.get(s.name) or s.default or "").strip().rstrip("/") for s in self.settings if s.endpoint)

    def endpoint_label(self) -> str:
        return " or ".join(s.label for s in self.settings if s.endpoint) or "URL"

    def identifier_problem(self, policy) -> str | None:
        """Why this kind cannot join on the policy's identifiers, or None."""
        if self.match_keys:
            return None  # it matches on its own keys
        if policy.hash_sha256 and not self.hashes:
            return f"{self.label} matches no hashes: {self.identifier_hint}"
        if self.identifiers is not None and policy.field not in self.identifiers:
            field_name = policy.get_field_display().split(" (")[0].lower()
            return f"{self.label} cannot match on {field_name}: {self.identifier_hint}"
        return None
