"""Naming conventions: `{channel}_{intent}_{window}_{exclusions}` and the values each token allows."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

TOKEN = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def template_tokens(template: str) -> list[str]:
    return TOKEN.findall(template)


def validate_convention(template: str, tokens: dict) -> list[str]:
    """Problems with a convention itself (before any name is checked against it)."""
    problems = []
    names = template_tokens(template)
    if not names:
        problems.append("template: needs at least one token such as {channel}")
    if len(names) != len(set(names)):
        problems.append("template: a token appears twice")
    pieces = TOKEN.split(template)
    for position in range(2, len(pieces) - 1, 2):
        if pieces[position] == "":
            problems.append(f"template: {{{pieces[position - 1]}}} and {{{pieces[position + 1]}}} need a separator between them")
    if not isinstance(tokens, dict):
        return problems + ["tokens: must be a mapping of token name to {values: [...]} or {pattern: ...}"]
    for name in names:
        spec = tokens.get(name)
        if not isinstance(spec, dict) or not (("values" in spec) ^ ("pattern" in spec)):
            problems.append(f"tokens.{name}: give either values: [...] or pattern: '...'")
            continue
        if "values" in spec and not (
            isinstance(spec["values"], list) and spec["values"] and all(isinstance(v, str) and v for v in spec["values"])
        ):
            problems.append(f"tokens.{name}.values: must be a non-empty list of texts")
        if "pattern" in spec:
            try:
                re.compile(spec["pattern"])
            except (re.error, TypeError) as exc:
                problems.append(f"tokens.{name}.pattern: not a regular expression ({exc})")
    for extra in set(tokens) - set(names):
        problems.append(f"tokens.{extra}: not in the template")
    return problems


def _token_regex(spec: dict) -> str:
    if "values" in spec:
        return "|".join(re.escape(v) for v in sorted(spec["values"], key=len, reverse=True))
    return spec["pattern"]


def _allowed(spec: dict) -> str:
    if "values" in spec:
        return "one of " + ", ".join(spec["values"])
    return f"text matching {spec['pattern']}"


def parse_name(convention, name: str) -> dict:
    """The name's tokens, or a ValidationError that shows the expected form and the wrong token."""
    template, tokens = convention.template, convention.tokens
    names = template_tokens(template)
    pieces = TOKEN.split(template)
    strict = "".join(
        re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>{_token_regex(tokens[piece])})" for i, piece in enumerate(pieces)
    )
    match = re.fullmatch(strict, name)
    if match:
        return match.groupdict()
    expected = f"expected {template}" + (f", e.g. {convention.example}" if convention.example else "")
    loose = "".join(re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>.+?)" for i, piece in enumerate(pieces))
    shape = re.fullmatch(loose, name)
    if not shape:
        separators = [p for i, p in enumerate(pieces) if i % 2 == 0 and p]
        raise ValidationError(
            f"{name!r} does not have the form of the naming convention: {expected} "
            f"({len(names)} parts separated by {' '.join(repr(s) for s in dict.fromkeys(separators))})"
        )
    for token in names:
        value = shape.group(token)
        if not re.fullmatch(_token_regex(tokens[token]), value):
            raise ValidationError(f"{name!r}: {{{token}}} is {value!r} but must be {_allowed(tokens[token])} ({expected})")
    raise ValidationError(f"{name!r} does not parse under the naming convention: {expected}")


def nonconforming_audiences(convention) -> list[tuple[object, str]]:
    """Audiences whose names no longer parse: reported, never renamed or disabled."""
    from .models import Audience

    broken = []
    for audience in Audience.objects.order_by("key"):
        try:
            parse_name(convention, audience.name)
        except ValidationError as exc:
            broken.append((audience, exc.messages[0]))
    return broken
