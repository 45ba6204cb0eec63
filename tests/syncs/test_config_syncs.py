"""Destinations and syncs in the configuration file: created from `env:NAME` references,
encrypted at rest, never in the history or an export, and every mistake named."""

from io import StringIO

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.db import connection

from syncs.models import Destination, Sync

pytestmark = pytest.mark.django_db

TOKEN = "ll-producer-token-4f9a1c"
SECRET = "hook-signing-secret-77e2"
NEW_TOKEN = "ll-producer-token-rotated-0b3d"


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(*args) -> str:
    with pytest.raises(CommandError) as failure:
        run(*args)
    return str(failure.value)


def livelike_item(**overrides) -> dict:
    return {
        "key": "livelike",
        "name": "LiveLike",
        "kind": "livelike",
        "settings": {"client_id": "abc123", "base_url": "https://cf-blast.livelikecdn.com/api/v1"},
        "credentials": {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"},
        **overrides,
    }


def hook_item(**overrides) -> dict:
    return {
        "key": "hook",
        "name": "Hook",
        "kind": "webhook",
        "settings": {"url": "https://hooks.example.com/downstream", "headers": {"X-Team": "growth"}},
        "credentials": {"signing_secret": "env:HOOK_SECRET"},
        "batch_size": 100,
        "max_attempts": 5,
        **overrides,
    }


def full_config() -> dict:
    return {
        "audiences": [
            {"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
        ],
        "destinations": [livelike_item(), hook_item()],
        "syncs": [
            {
                "key": "buyers-livelike",
                "audience": "buyers",
                "destination": "livelike",
                "fields": ["email"],
                "downstream_audience_id": "ll-buyers",
            },
            {"key": "buyers-hook", "audience": "buyers", "destination": "hook", "dry_run": True},
        ],
    }


@pytest.fixture(autouse=True)
def secrets(monkeypatch):
    monkeypatch.setenv("LIVELIKE_PRODUCER_TOKEN", TOKEN)
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    return monkeypatch


@pytest.fixture
def write(tmp_path):
    def write(content, name="downstream.yaml") -> str:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return str(path)

    return write


def raw_rows(table: str) -> str:
    """Every column of every row of a table, as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
        return repr(cursor.fetchall())


def snapshot():
    return {
        "destinations": sorted(map(repr, Destination.objects.values())),
        "syncs": sorted(map(repr, Sync.objects.values())),
        "destination history": Destination.history.count(),
        "sync history": Sync.history.count(),
    }


# --- creating -------------------------------------------------------------------------------


def test_apply_config_creates_destinations_and_syncs_from_env_references(write):
    out = run("apply_config", write(full_config())).splitlines()
    assert {
        "create destinations.livelike",
        "create destinations.hook",
        "create syncs.buyers-livelike",
        "create syncs.buyers-hook",
    } <= set(out)

    livelike = Destination.objects.get(key="livelike")
    assert livelike.kind == "livelike" and livelike.settings["client_id"] == "abc123"
    assert livelike.credentials == {"producer_token": TOKEN}
    assert livelike.credential_refs == {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"}
    hook = Destination.objects.get(key="hook")
    assert hook.credentials == {"signing_secret": SECRET}
    assert (hook.batch_size, hook.max_attempts, hook.settings["headers"]) == (100, 5, {"X-Team": "growth"})

    sync = Sync.objects.get(key="buyers-livelike")
    assert (sync.audience.key, sync.destination.key, sync.fields, sync.downstream_id) == (
        "buyers",
        "livelike",
        ["email"],
        "ll-buyers",
    )
    assert Sync.objects.get(key="buyers-hook").dry_run is True


def test_credentials_are_encrypted_in_the_database_column(write):
    run("apply_config", write(full_config()))
    column = "".join(Destination.objects.values_list("credentials_encrypted", flat=True))
    assert column and TOKEN not in column and SECRET not in column
    table = raw_rows(Destination._meta.db_table)
    assert TOKEN not in table and SECRET not in table


def test_the_history_holds_no_credential_value(write, secrets):
    path = write(full_config())
    run("apply_config", path)
    secrets.setenv("ROTATED_TOKEN", NEW_TOKEN)
    data = full_config()
    data["destinations"][0]["credentials"] = {"producer_token": "env:ROTATED_TOKEN"}
    run("apply_config", write(data))
    assert Destination.objects.get(key="livelike").credentials == {"producer_token": NEW_TOKEN}

    history = Destination.history.model
    assert "credentials_encrypted" not in {f.name for f in history._meta.fields}
    assert Destination.history.filter(key="livelike").count() == 2
    rows = raw_rows(history._meta.db_table)
    for value in (TOKEN, NEW_TOKEN, SECRET):
        assert value not in rows
    assert "env:ROTATED_TOKEN" in rows  # the reference is the audit trail


# --- exporting ------------------------------------------------------------------------------


def test_export_prints_references_and_never_the_values(write):
    run("apply_config", write(full_config()))
    text = run("export_config")
    assert TOKEN not in text and SECRET not in text
    exported = yaml.safe_load(text)
    destinations = {d["key"]: d for d in exported["destinations"]}
    assert destinations["livelike"]["credentials"] == {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"}
    assert destinations["hook"]["credentials"] == {"signing_secret": "env:HOOK_SECRET"}
    assert {s["key"] for s in exported["syncs"]} == {"buyers-livelike", "buyers-hook"}


def test_applying_the_export_is_a_no_op(write):
    run("apply_config", write(full_config()))
    before = snapshot()
    exported = write(run("export_config"), "exported.yaml")
    assert run("apply_config", exported).strip() == "no changes: the database matches the file"
    assert snapshot() == before


def test_a_value_typed_into_the_admin_is_exported_as_keep_and_applies_as_a_no_op(write):
    from syncs.services import destination_save

    run("apply_config", write(full_config()))
    destination_save(instance=Destination.objects.get(key="hook"), data={"credentials": {"signing_secret": "typed-in-secret"}})
    text = run("export_config")
    assert "typed-in-secret" not in text
    hook = next(d for d in yaml.safe_load(text)["destinations"] if d["key"] == "hook")
    assert hook["credentials"] == {"signing_secret": "keep"}
    before = snapshot()
    assert run("apply_config", write(text, "exported.yaml")).strip() == "no changes: the database matches the file"
    assert snapshot() == before
    assert Destination.objects.get(key="hook").credentials == {"signing_secret": "typed-in-secret"}


# --- mistakes -------------------------------------------------------------------------------


def test_a_missing_environment_variable_is_an_error_naming_file_key_and_field(write, secrets):
    secrets.delenv("LIVELIKE_PRODUCER_TOKEN")
    path = write(full_config())
    message = refused("apply_config", path)
    assert (
        f"{path}: destinations[livelike].credentials: producer_token: the environment variable LIVELIKE_PRODUCER_TOKEN is not set"
    ) in message.splitlines()
    assert not Destination.objects.exists() and not Sync.objects.exists()  # nothing half-written


def test_keep_leaves_the_stored_credential_of_an_existing_destination(write, secrets):
    run("apply_config", write(full_config()))
    secrets.delenv("LIVELIKE_PRODUCER_TOKEN")  # no longer needed once stored
    data = full_config()
    data["destinations"][0]["credentials"] = {"producer_token": "keep"}
    data["destinations"][0]["name"] = "LiveLike (prod)"
    run("apply_config", write(data))
    livelike = Destination.objects.get(key="livelike")
    assert livelike.name == "LiveLike (prod)"
    assert livelike.credentials == {"producer_token": TOKEN}


def test_keep_for_a_new_destination_asks_for_a_reference(write):
    data = full_config()
    data["destinations"][0]["credentials"] = {"producer_token": "keep"}
    path = write(data)
    message = refused("apply_config", path)
    assert (
        f"{path}: destinations[livelike].credentials: producer_token: 'keep' but nothing is stored yet; give env:NAME" in message
    )
    assert not Destination.objects.filter(key="livelike").exists()


def test_unknown_setting_and_credential_names_get_messages(write):
    data = full_config()
    data["destinations"][0] = livelike_item(
        settings={"client_id": "abc123", "colour": "red"},
        credentials={"producer_token": "env:LIVELIKE_PRODUCER_TOKEN", "password": "env:HOOK_SECRET"},
    )
    path = write(data)
    lines = refused("apply_config", path).splitlines()
    assert f"{path}: destinations[livelike].settings: colour: unknown setting for livelike; expected base_url, client_id" in lines
    assert f"{path}: destinations[livelike].credentials: password: unknown credential; expected producer_token" in lines
    assert not Destination.objects.exists()


def test_bad_urls_get_messages(write):
    data = full_config()
    data["destinations"] = [
        livelike_item(settings={"client_id": "abc123", "base_url": "ftp://cf-blast.livelikecdn.com"}),
        hook_item(settings={"url": "hooks.example.com/downstream"}),
    ]
    path = write(data)
    lines = refused("apply_config", path).splitlines()
    assert f"{path}: destinations[livelike].settings: 'ftp://cf-blast.livelikecdn.com' is not an http(s) URL" in lines
    assert f"{path}: destinations[hook].settings: 'hooks.example.com/downstream' is not an http(s) URL" in lines


def test_a_required_setting_and_credential_are_named(write):
    data = full_config()
    data["destinations"][0] = livelike_item(settings={}, credentials={})
    path = write(data)
    lines = refused("apply_config", path).splitlines()
    assert f"{path}: destinations[livelike].settings: client_id: required for livelike" in lines
    assert f"{path}: destinations[livelike].credentials: producer_token: required for livelike" in lines


def test_a_destination_used_by_a_sync_cannot_be_deleted(write):
    run("apply_config", write(full_config()))
    data = full_config()
    data["destinations"] = [hook_item()]  # livelike left out: delete it
    del data["syncs"]  # ... while buyers-livelike still uses it
    path = write(data)
    message = refused("apply_config", path)
    assert f"{path}: destinations[livelike]: destination 'livelike' is used by buyers-livelike; change those first" in message
    assert Destination.objects.filter(key="livelike").exists()


def test_a_destination_goes_together_with_the_syncs_that_used_it(write):
    run("apply_config", write(full_config()))
    data = full_config()
    data["destinations"] = [hook_item()]
    data["syncs"] = [s for s in data["syncs"] if s["destination"] == "hook"]
    out = run("apply_config", write(data)).splitlines()
    assert {"delete destinations.livelike", "delete syncs.buyers-livelike"} <= set(out)
    assert list(Destination.objects.values_list("key", flat=True)) == ["hook"]
    assert list(Sync.objects.values_list("key", flat=True)) == ["buyers-hook"]


def test_check_plans_destinations_and_syncs_and_writes_nothing(write):
    lines = run("apply_config", write(full_config()), "--check").splitlines()
    assert "create destinations.livelike" in lines and "create syncs.buyers-hook" in lines
    assert not Destination.objects.exists() and not Sync.objects.exists()


def test_secret_headers_come_from_an_env_variable_holding_json(write, secrets):
    from syncs.destinations import transport_for

    secrets.setenv("HOOK_HEADERS", '{"Authorization": "Bearer receiver-key-91"}')
    data = full_config()
    data["destinations"][1]["credentials"] = {"signing_secret": "env:HOOK_SECRET", "headers": "env:HOOK_HEADERS"}
    run("apply_config", write(data))
    hook = Destination.objects.get(key="hook")
    assert transport_for(hook).headers == {"X-Team": "growth", "Authorization": "Bearer receiver-key-91"}
    text = run("export_config")
    assert "receiver-key-91" not in text and "env:HOOK_HEADERS" in text
    assert run("apply_config", write(text, "exported.yaml")).strip() == "no changes: the database matches the file"


def test_secret_headers_that_are_not_a_json_object_get_a_message(write, secrets):
    secrets.setenv("HOOK_HEADERS", "Authorization: Bearer receiver-key-91")
    data = full_config()
    data["destinations"][1]["credentials"] = {"signing_secret": "env:HOOK_SECRET", "headers": "env:HOOK_HEADERS"}
    path = write(data)
    lines = refused("apply_config", path).splitlines()
    assert (
        f"{path}: destinations[hook].credentials: headers: give a JSON object of header names to texts, "
        'such as {"Authorization": "Bearer ..."}'
    ) in lines
    assert not Destination.objects.filter(key="hook").exists()


def test_a_secret_written_into_the_file_itself_is_refused(write):
    data = full_config()
    data["destinations"][0]["credentials"] = {"producer_token": "plain-token-in-the-file"}
    path = write(data)
    message = refused("apply_config", path)
    assert (
        f"{path}: destinations[livelike].credentials: producer_token: "
        "a configuration file holds env:NAME or keep, never the secret itself"
    ) in message.splitlines()
    assert not Destination.objects.filter(key="livelike").exists()
    assert "plain-token-in-the-file" not in message
