"""Member sources other than rules (a Customer.io segment) plug in here; `audiences` never
imports the code that implements them. Registered by the sync side when it starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MemberSource:
    kind: str
    # (audience, now) -> Q over Person: who the source says is a member
    condition: Callable
    # (audience) -> None: fetch the members again (called before a full evaluation)
    refresh: Callable
    # (source_settings) -> list of problems
    validate: Callable


SOURCES: dict[str, MemberSource] = {}


def register_source(source: MemberSource) -> None:
    SOURCES[source.kind] = source


def source_for(kind: str) -> MemberSource:
    try:
        return SOURCES[kind]
    except KeyError:
        raise ValueError(f"no member source is registered for {kind!r}")
