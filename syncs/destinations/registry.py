"""Every destination kind, one line each. A new kind is one folder (`<kind>/__init__.py`
exporting its `SPEC`, beside its transport) and one line in KINDS; the model's choices, the
services, the dashboard's editors and config as code read this table."""

from __future__ import annotations

from . import file, google, livelike, meta, tiktok, webhook
from .spec import DestinationSpec

KINDS: dict[str, DestinationSpec] = {
    spec.kind: spec
    for spec in (
        livelike.SPEC,
        webhook.SPEC,
        file.SPEC,
        meta.SPEC,
        google.SPEC,
        tiktok.SPEC,
    )
}


def register(spec: DestinationSpec) -> None:
    """Add a kind from outside this package (a plug-in, a test's toy kind)."""
    KINDS[spec.kind] = spec


def unregister(kind: str) -> None:
    KINDS.pop(kind, None)


def spec_for(kind: str) -> DestinationSpec:
    try:
        return KINDS[kind]
    except KeyError:
        raise LookupError(f"{kind!r} is not a destination kind: use {', '.join(KINDS)}") from None


def kind_choices() -> list[tuple[str, str]]:
    return [(spec.kind, spec.label) for spec in KINDS.values()]


def transport_for(destination):
    return spec_for(destination.kind).transport(destination)
