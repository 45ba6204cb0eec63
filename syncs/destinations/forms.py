"""Forms made from a kind's spec: one field per setting and per credential, typed as the spec
says, so nobody types JSON. Read by the dashboard's destination editor."""

from __future__ import annotations

from django import forms
from django.core.validators import MaxValueValidator

from ..services import KEEP, destination_endpoint_moved
from .spec import DestinationSpec

SETTING, CREDENTIAL = "setting__", "credential__"
NUMBERS = {
    "batch_size": ("Rows per request", forms.IntegerField, {"min_value": 1}),
    "rate_limit_per_s": ("Requests per second at most", forms.FloatField, {"min_value": 0.01}),
    "timeout_s": ("Request deadline (s)", forms.FloatField, {"min_value": 0.1}),
    "concurrency": ("Requests in flight at once", forms.IntegerField, {"min_value": 1}),
    "max_attempts": ("Attempts before a row is a dead letter", forms.IntegerField, {"min_value": 1}),
}


def lines_to_mapping(text: str) -> dict[str, str]:
    """`Name: value` per line (blank lines ignored) → {name: value}; ValidationError on a line
    without a colon."""
    mapping = {}
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise forms.ValidationError(f"line {number}: write it as Name: value")
        mapping[name.strip()] = value.strip()
    return mapping


def mapping_to_lines(mapping) -> str:
    return "\n".join(f"{k}: {v}" for k, v in (mapping or {}).items()) if isinstance(mapping, dict) else ""


def destination_form(spec: DestinationSpec, *, instance=None):
    """A form class for one kind: key and name, the spec's settings, its write-only credentials
    (empty keeps what is stored) and the numbers that shape delivery."""
    stored = set(instance.credential_names()) if instance else set()
    fields: dict[str, forms.Field] = {
        "key": forms.SlugField(max_length=64, help_text="Stable id for syncs and config files; never changes."),
        "name": forms.CharField(max_length=120),
    }
    for setting in spec.settings:
        common = {"label": setting.label[:1].upper() + setting.label[1:], "required": setting.required, "help_text": setting.help}
        if setting.type == "choice":
            field = forms.ChoiceField(choices=[(c, c) for c in setting.choices], **common)
        elif setting.type == "mapping":
            field = forms.CharField(
                widget=forms.Textarea(attrs={"rows": 3, "placeholder": "X-Team: retention"}),
                **{**common, "help_text": f"{setting.help} One per line, as Name: value.".strip()},
            )
        elif setting.type == "url":
            field = forms.CharField(widget=forms.URLInput(attrs={"placeholder": setting.default or "https://"}), **common)
        else:
            field = forms.CharField(**common)
        fields[SETTING + setting.name] = field
    for credential in spec.credentials:
        have = credential.name in stored
        help_text = "Stored encrypted and never shown again." + (" Leave empty to keep the stored one." if have else "")
        if credential.type == "mapping":
            widget = forms.Textarea(attrs={"rows": 2, "autocomplete": "off", "placeholder": "X-Api-Key: …"})
            help_text += " One per line, as Name: value."
        else:
            widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
        label = credential.label + (" (stored)" if have else "")
        fields[CREDENTIAL + credential.name] = forms.CharField(
            label=label, required=credential.required and not have, widget=widget, help_text=help_text, strip=True
        )
    for name, (label, kind, options) in NUMBERS.items():
        fields[name] = kind(label=label, required=False, **options)
    fields["batch_size"].max_value = spec.max_batch
    fields["batch_size"].validators.append(
        MaxValueValidator(spec.max_batch, message=f"{spec.label} takes at most {spec.max_batch} rows a request")
    )
    return type(f"{spec.kind.title()}DestinationForm", (forms.Form,), fields)


def destination_initial(spec: DestinationSpec, instance=None) -> dict:
    initial = {}
    options = (instance.settings if instance else None) or {}
    for setting in spec.settings:
        value = options.get(setting.name, setting.default)
        initial[SETTING + setting.name] = mapping_to_lines(value) if setting.type == "mapping" else value
    if instance:
        initial.update({"key": instance.key, "name": instance.name, **{n: getattr(instance, n) for n in NUMBERS}})
    else:
        initial.update({"batch_size": spec.max_batch, "rate_limit_per_s": spec.default_rate_limit_per_s})
    return initial


def destination_data(spec: DestinationSpec, cleaned: dict, *, instance=None) -> dict:
    """The form's values as `destination_save` takes them: a stored credential left empty is
    kept, unless the endpoint moves (credentials go only where they were entered for, so the
    service then asks for each required one again). Raises forms.ValidationError keyed by
    field for a mapping written wrong."""
    errors = {}
    settings = {}
    for setting in spec.settings:
        value = cleaned.get(SETTING + setting.name)
        if setting.type == "mapping":
            try:
                value = lines_to_mapping(value)
            except forms.ValidationError as exc:
                errors[SETTING + setting.name] = exc.messages
                continue
        if value not in (None, "", {}):
            settings[setting.name] = value
    credentials = {}
    keep = instance is not None and not destination_endpoint_moved(instance, settings)
    for credential in spec.credentials:
        value = cleaned.get(CREDENTIAL + credential.name)
        if not value:
            if keep and credential.name in instance.credential_names():
                credentials[credential.name] = KEEP
            continue
        if credential.type == "mapping":
            try:
                value = lines_to_mapping(value)
            except forms.ValidationError as exc:
                errors[CREDENTIAL + credential.name] = exc.messages
                continue
        credentials[credential.name] = value
    if errors:
        raise forms.ValidationError(errors)
    data = {"key": cleaned["key"], "name": cleaned["name"], "kind": spec.kind, "settings": settings}
    if credentials:
        data["credentials"] = credentials
    data.update({name: cleaned[name] for name in NUMBERS if cleaned.get(name) is not None})
    return data


def error_field(spec: DestinationSpec, field: str, message: str) -> str | None:
    """Which form field a service message belongs to: `settings` and `credentials` messages
    start with the setting's name."""
    names = {
        "settings": (SETTING, [s.name for s in spec.settings]),
        "credentials": (CREDENTIAL, [c.name for c in spec.credentials]),
    }
    if field in names:
        prefix, known = names[field]
        head = message.split(":", 1)[0].strip()
        return prefix + head if head in known else None
    return field
