"""Files stay in their folder; credentials stay with their endpoint.

A file destination writes only under the export root (settings.EXPORT_ROOT) and never under a
folder the web server serves: absolute paths, `..` and symlinks out of it are refused when saved
and again when written. A destination's credentials belong to the URL they were entered for:
changing the URL clears them. Outside DEBUG only https goes out, and never to a loopback,
private or link-local address unless DESTINATION_PRIVATE_HOSTS lists it, checked when saved and
again when sent, after DNS resolution.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from audiences.services import audience_save
from syncs.customerio import AppApiClient
from syncs.destinations import OutRow, TransportError, transport_for
from syncs.models import CustomerIoWorkspace, Destination, Sync
from syncs.services import destination_save, sync_save, workspace_save
from tests.contract_servers.livelike import LiveLikeServer
from tests.contract_servers.webhook import WebhookReceiver

pytestmark = pytest.mark.django_db

PROJECT = Path(settings.BASE_DIR)
TOKEN = "ll-producer-token-5e1d"


def errors_of(failure) -> str:
    return " ".join(" ".join(v) for v in failure.value.message_dict.values())


def saved(**data) -> Destination:
    return destination_save(data={"key": "files", "name": "Files", "kind": "file", **data})


def file_sync(destination_key="files") -> Sync:
    if not Sync.objects.filter(key="carts-files").exists():
        audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    return sync_save(data={"key": "carts-files", "audience": "carts", "destination": destination_key, "fields": []})


def one_row() -> list[OutRow]:
    return [OutRow(1, "enter", "cus_1", timezone.now(), {})]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- files stay in their folder --------------------------------------------------------------


@pytest.fixture
def export_root(settings, tmp_path):
    root = tmp_path / "exports"
    root.mkdir()
    settings.EXPORT_ROOT = root
    return root


def test_a_file_destination_writes_under_the_export_root(export_root):
    destination = saved(settings={"directory": "partner-x", "format": "csv"})
    sync = file_sync()
    transport_for(destination).send(one_row(), batch_id="b1", sync=sync)
    (written,) = files_under(export_root)
    assert written.parent == export_root / "partner-x" / "carts"
    default = destination_save(data={"key": "plain", "name": "Plain", "kind": "file"})
    path = transport_for(default).write_snapshot(sync, one_row())
    assert path.parent == export_root / "plain" / "carts"


@pytest.mark.parametrize(
    "directory",
    [
        str(PROJECT / "static" / "leak"),
        "/tmp/elsewhere",
        "../outside",
        "partner/../../outside",
    ],
)
def test_a_directory_out_of_the_export_root_is_refused_when_saved(export_root, directory):
    with pytest.raises(ValidationError) as failure:
        saved(settings={"directory": directory})
    message = errors_of(failure)
    assert "directory" in message and "export root" in message and str(export_root) in message
    assert not Destination.objects.exists()


def test_a_served_folder_is_refused_even_inside_the_export_root(settings):
    settings.EXPORT_ROOT = PROJECT  # a careless root: the static folder is inside it
    with pytest.raises(ValidationError) as failure:
        saved(settings={"directory": "static/leak"})
    assert "served" in errors_of(failure)
    with pytest.raises(ValidationError):
        saved(settings={"directory": "var/staticfiles/leak"})


def test_a_directory_out_of_the_root_is_refused_at_write_time_too(export_root):
    # written before the check existed, or straight into the database
    destination = Destination.objects.create(
        key="files", name="Files", kind="file", settings={"directory": str(PROJECT / "static" / "leak")}
    )
    Destination.objects.create(key="ok", name="Ok", kind="file")
    sync = file_sync("ok")
    with pytest.raises(TransportError) as failure:
        transport_for(destination).send(one_row(), batch_id="b1", sync=sync)
    assert failure.value.permanent and "export root" in str(failure.value)
    assert not (PROJECT / "static" / "leak").exists()


def test_a_symlink_out_of_the_root_is_refused_when_saved(export_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (export_root / "partner").symlink_to(outside)
    with pytest.raises(ValidationError) as failure:
        saved(settings={"directory": "partner"})
    assert "export root" in errors_of(failure)
    with pytest.raises(ValidationError):
        saved(settings={"directory": "partner/deeper"})


def test_a_symlink_made_after_saving_is_refused_at_write_time(export_root, tmp_path):
    destination = saved(settings={"directory": "partner"})
    sync = file_sync()
    outside = tmp_path / "outside"
    outside.mkdir()
    (export_root / "partner").symlink_to(outside)
    with pytest.raises(TransportError) as failure:
        transport_for(destination).send(one_row(), batch_id="b1", sync=sync)
    assert failure.value.permanent
    # the day's delta file itself made a link to a file outside
    (export_root / "partner").unlink()
    (export_root / "partner" / "carts").mkdir(parents=True)
    delta = export_root / "partner" / "carts" / f"carts-files-delta-{timezone.now():%Y%m%d}.csv"
    delta.symlink_to(outside / "stolen.csv")
    with pytest.raises(TransportError) as failure:
        transport_for(destination).send(one_row(), batch_id="b2", sync=sync)
    assert failure.value.permanent
    assert files_under(outside) == []


def test_apply_config_refuses_a_directory_out_of_the_root(export_root, tmp_path):
    path = tmp_path / "team.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "destinations": [
                    {
                        "key": "files",
                        "name": "Files",
                        "kind": "file",
                        "settings": {"directory": str(PROJECT / "static" / "leak")},
                    },
                ]
            }
        )
    )
    with pytest.raises(CommandError) as failure:
        call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    assert "destinations[files].settings" in str(failure.value) and "export root" in str(failure.value)
    assert not Destination.objects.exists()


def test_the_dashboard_editor_refuses_a_directory_out_of_the_root_beside_the_field(export_root, manager_client):
    response = manager_client.post(
        "/dashboard/destinations/new/",
        {
            "kind": "file",
            "key": "files",
            "name": "Files",
            "setting__directory": f"{PROJECT}/static/leak",
            "setting__format": "csv",
            "batch_size": "500",
            "rate_limit_per_s": "10",
        },
    )
    assert response.status_code == 400
    error = response.content.decode().split('id="id_setting__directory-error">', 1)[1].split("</p>", 1)[0]
    assert "export root" in error
    assert not Destination.objects.exists()


# --- credentials stay with their endpoint ----------------------------------------------------


@pytest.fixture
def tokens(monkeypatch):
    monkeypatch.setenv("LIVELIKE_PRODUCER_TOKEN", TOKEN)
    monkeypatch.setenv("OTHER_TOKEN", "ll-other-token-77")
    monkeypatch.setenv("HOOK_SECRET", "hook-secret-1")
    monkeypatch.setenv("HOOK_HEADERS", '{"Authorization": "Bearer hook-header-secret"}')


def livelike(**settings_):
    return destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"client_id": "client-1", "base_url": "https://cf-blast.livelikecdn.com/api/v1", **settings_},
            "credentials": {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"},
        }
    )


def test_changing_the_base_url_clears_the_token_and_asks_for_it_again(tokens):
    destination = livelike()
    moved = {"settings": {"client_id": "client-1", "base_url": "https://eu.livelikecdn.example/api/v1"}}
    with pytest.raises(ValidationError) as failure:
        destination_save(data=moved, instance=destination)
    assert "producer_token" in errors_of(failure) and "base URL changed" in errors_of(failure)
    with pytest.raises(ValidationError) as failure:
        destination_save(data={**moved, "credentials": {"producer_token": "keep"}}, instance=destination)
    assert "keep" in errors_of(failure) and "base URL changed" in errors_of(failure)
    destination.refresh_from_db()
    assert destination.settings["base_url"] == "https://cf-blast.livelikecdn.com/api/v1"
    assert destination.credentials == {"producer_token": TOKEN}

    destination_save(data={**moved, "credentials": {"producer_token": "env:OTHER_TOKEN"}}, instance=destination)
    destination.refresh_from_db()
    assert destination.credentials == {"producer_token": "ll-other-token-77"}
    # anything else may change and the token stays
    destination_save(data={"name": "LiveLike EU", "batch_size": 200}, instance=destination)
    destination.refresh_from_db()
    assert destination.credentials == {"producer_token": "ll-other-token-77"}


def test_leaving_the_base_url_out_is_a_change_of_endpoint_too(tokens):
    destination = livelike(base_url="https://proxy.example/api/v1")
    with pytest.raises(ValidationError) as failure:  # to the default one
        destination_save(data={"settings": {"client_id": "client-1"}}, instance=destination)
    assert "base URL changed" in errors_of(failure)
    # the default written out is the same endpoint: the token stays
    Destination.objects.all().delete()
    destination = livelike(base_url="")
    destination_save(
        data={"settings": {"client_id": "client-1", "base_url": "https://cf-blast.livelikecdn.com/api/v1/"}}, instance=destination
    )
    assert Destination.objects.get(pk=destination.pk).credentials == {"producer_token": TOKEN}


def test_changing_a_webhook_url_clears_the_secret_and_the_secret_headers(tokens):
    destination = destination_save(
        data={
            "key": "hook",
            "name": "Hook",
            "kind": "webhook",
            "settings": {"url": "https://hooks.example.com/a"},
            "credentials": {"signing_secret": "env:HOOK_SECRET", "headers": "env:HOOK_HEADERS"},
        }
    )
    with pytest.raises(ValidationError) as failure:
        destination_save(
            data={
                "settings": {"url": "https://attacker.example/a"},
                "credentials": {"signing_secret": "env:HOOK_SECRET", "headers": "keep"},
            },
            instance=destination,
        )
    assert "headers" in errors_of(failure) and "URL changed" in errors_of(failure)
    destination_save(
        data={"settings": {"url": "https://attacker.example/a"}, "credentials": {"signing_secret": "env:HOOK_SECRET"}},
        instance=destination,
    )
    destination.refresh_from_db()
    assert destination.credentials == {"signing_secret": "hook-secret-1"}  # the headers went with the old URL


def test_apply_config_says_keep_no_longer_holds_when_the_url_changed(tokens, tmp_path):
    livelike()
    path = tmp_path / "team.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "destinations": [
                    {
                        "key": "livelike",
                        "name": "LiveLike",
                        "kind": "livelike",
                        "settings": {"client_id": "client-1", "base_url": "https://proxy.example/api/v1"},
                        "credentials": {"producer_token": "keep"},
                    }
                ]
            }
        )
    )
    with pytest.raises(CommandError) as failure:
        call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    message = str(failure.value)
    assert "destinations[livelike].credentials" in message and "keep" in message and "base URL changed" in message
    assert Destination.objects.get().settings["base_url"] == "https://cf-blast.livelikecdn.com/api/v1"


def field_error(response, field: str) -> str:
    return response.content.decode().split(f'id="id_{field}-error">', 1)[1].split("</p>", 1)[0]


def test_the_dashboard_editor_asks_for_the_token_again_when_the_base_url_changes(tokens, manager_client):
    destination = livelike()
    # as a browser sends it: the key is shown disabled, so it is not in the body
    form = {
        "kind": "livelike",
        "name": "LiveLike",
        "setting__base_url": "https://proxy.example/api/v1",
        "setting__client_id": "client-1",
        "credential__producer_token": "",
        "batch_size": "500",
        "rate_limit_per_s": "10",
    }
    response = manager_client.post("/dashboard/destinations/livelike/", form)
    assert response.status_code == 400
    error = field_error(response, "credential__producer_token")
    assert "base URL changed" in error and "enter it again" in error and "env:" not in error and "keep" not in error
    destination.refresh_from_db()
    assert destination.settings["base_url"] == "https://cf-blast.livelikecdn.com/api/v1"
    assert destination.credentials == {"producer_token": TOKEN}

    response = manager_client.post("/dashboard/destinations/livelike/", {**form, "credential__producer_token": "typed-again"})
    assert response.status_code == 302, response.content.decode()[:3000]
    destination.refresh_from_db()
    assert destination.settings["base_url"] == "https://proxy.example/api/v1"
    assert destination.credentials == {"producer_token": "typed-again"}


def test_the_dashboard_editor_drops_the_secret_headers_when_a_webhook_url_changes(tokens, manager_client):
    destination = destination_save(
        data={
            "key": "hook",
            "name": "Hook",
            "kind": "webhook",
            "settings": {"url": "https://hooks.example.com/a"},
            "credentials": {"signing_secret": "env:HOOK_SECRET", "headers": "env:HOOK_HEADERS"},
        }
    )
    form = {
        "kind": "webhook",
        "name": "Hook",
        "setting__url": "https://hooks.example.com/a",
        "setting__headers": "",
        "credential__signing_secret": "",
        "credential__headers": "",
        "batch_size": "100",
        "rate_limit_per_s": "10",
    }
    # the same URL: both stay as they are when left empty
    assert manager_client.post("/dashboard/destinations/hook/", {**form, "name": "Hook A"}).status_code == 302
    destination.refresh_from_db()
    assert destination.credentials == {
        "signing_secret": "hook-secret-1",
        "headers": {"Authorization": "Bearer hook-header-secret"},
    }

    moved = {**form, "setting__url": "https://attacker.example/a"}
    response = manager_client.post("/dashboard/destinations/hook/", moved)
    assert response.status_code == 400 and "URL changed" in field_error(response, "credential__signing_secret")
    response = manager_client.post("/dashboard/destinations/hook/", {**moved, "credential__signing_secret": "typed-secret"})
    assert response.status_code == 302, response.content.decode()[:3000]
    destination.refresh_from_db()
    assert destination.settings["url"] == "https://attacker.example/a"
    assert destination.credentials == {"signing_secret": "typed-secret"}  # the headers went with the old URL


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8765/api",
        "http://127.0.0.1:8765",
        "https://localhost/api",
        "https://10.1.2.3/api",
        "https://192.168.0.10/api",
        "https://169.254.169.254/latest",
        "https://[::1]/api",
        "https://0.0.0.0/api",
        "https://[::ffff:127.0.0.1]/api",
        "https://printer.localhost/api",
    ],
)
def test_a_private_address_is_refused_without_the_setting(tokens, settings, url):
    settings.DESTINATION_PRIVATE_HOSTS = []
    with pytest.raises(ValidationError) as failure:
        livelike(base_url=url)
    assert "DESTINATION_PRIVATE_HOSTS" in errors_of(failure)
    assert not Destination.objects.exists()


def test_http_is_refused_outside_debug_for_a_host_not_listed(tokens, settings):
    settings.DEBUG = False
    settings.DESTINATION_PRIVATE_HOSTS = ["127.0.0.1"]
    with pytest.raises(ValidationError) as failure:
        livelike(base_url="http://hooks.example.com/api")
    assert "https" in errors_of(failure)
    settings.DEBUG = True
    assert livelike(base_url="http://hooks.example.com/api").settings["base_url"] == "http://hooks.example.com/api"


def test_listed_hosts_and_networks_may_be_private_and_plain_http(tokens, settings):
    settings.DEBUG = False
    settings.DESTINATION_PRIVATE_HOSTS = ["127.0.0.1", "livelike.internal", "10.0.0.0/8"]
    for url in ("http://127.0.0.1:8765/api", "http://livelike.internal/api", "https://10.1.2.3/api", "http://10.9.9.9/api"):
        destination = livelike(base_url=url)
        assert destination.settings["base_url"] == url
        destination.delete()
    with pytest.raises(ValidationError):
        livelike(base_url="http://192.168.1.1/api")


def test_a_hostname_that_resolves_to_loopback_is_refused_when_sending(tokens, settings):
    with LiveLikeServer(token=TOKEN, client_id="client-1") as server:
        settings.DESTINATION_PRIVATE_HOSTS = ["localhost"]
        destination = livelike(base_url=f"http://localhost:{server.port}/api/v1")
        audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
        sync = sync_save(data={"key": "carts-livelike", "audience": "carts", "destination": "livelike"})
        settings.DESTINATION_PRIVATE_HOSTS = []
        settings.DEBUG = True  # plain http passes: what refuses it is the address the name resolves to
        with pytest.raises(TransportError) as failure:
            transport_for(destination).send(one_row(), batch_id="b1", sync=sync)
        assert failure.value.permanent
        assert "resolves to 127.0.0.1" in str(failure.value) and "DESTINATION_PRIVATE_HOSTS" in str(failure.value)
        assert server.request_log() == []  # the token never left


def test_a_webhook_is_checked_when_sending_too(settings):
    with WebhookReceiver(secret="hook-secret") as receiver:
        destination = Destination.objects.create(
            key="hook", name="Hook", kind="webhook", settings={"url": receiver.url + "/hook"}
        )
        destination.set_credentials({"signing_secret": "hook-secret"})
        destination.save()
        audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
        sync = sync_save(data={"key": "carts-hook", "audience": "carts", "destination": "hook"})
        settings.DESTINATION_PRIVATE_HOSTS = []
        with pytest.raises(TransportError) as failure:
            transport_for(destination).send(one_row(), batch_id="b1", sync=sync)
        assert failure.value.permanent and receiver.request_log() == []
        settings.DESTINATION_PRIVATE_HOSTS = ["127.0.0.1"]
        assert transport_for(destination).send(one_row(), batch_id="b2", sync=sync).accepted == [1]


def test_the_customer_io_workspace_follows_the_same_rules(settings, monkeypatch):
    monkeypatch.setenv("CIO_APP_KEY", "cio-app-key-1")
    settings.DESTINATION_PRIVATE_HOSTS = []
    with pytest.raises(ValidationError) as failure:
        workspace_save(
            data={"key": "cio", "name": "CIO", "base_url": "http://127.0.0.1:9/", "credentials": {"app_key": "env:CIO_APP_KEY"}}
        )
    assert "DESTINATION_PRIVATE_HOSTS" in errors_of(failure)
    workspace = workspace_save(data={"key": "cio", "name": "CIO", "credentials": {"app_key": "env:CIO_APP_KEY"}})
    with pytest.raises(ValidationError) as failure:
        workspace_save(data={"base_url": "https://proxy.example"}, instance=workspace)
    assert "app_key" in errors_of(failure) and "changed" in errors_of(failure)
    # stored straight into the database: the client refuses before any request
    CustomerIoWorkspace.objects.filter(pk=workspace.pk).update(base_url="https://localhost:9")
    workspace.refresh_from_db()
    with pytest.raises(TransportError) as failure:
        AppApiClient(workspace).list_segments()
    assert failure.value.permanent and "127.0.0.1" in str(failure.value)
