"""The Customer.io segment source: pull_segment against a real CustomerIoServer on a loopback
port (cursor paging, mapping to people, the snapshot, attributes, the App API's rate limit and
error answers), and what evaluation then does with the snapshot."""

import math
import time
from urllib.parse import parse_qs

import pytest
from django.core.exceptions import ValidationError

from audiences.evaluation import evaluate_all
from audiences.models import Membership, Person
from audiences.services import audience_save
from syncs.customerio import PAGE_LIMIT
from syncs.delivery import deliver_destination
from syncs.http import TransportError
from syncs.models import Alert, Delivery, DeliveryBatch, RemovalHold, SegmentMember, SourcePull
from syncs.services import sync_save, workspace_save
from syncs.sources import pull_segment
from tests.contract_servers.common import FaultPlan
from tests.contract_servers.customerio import CustomerIoServer

APP_KEY = "cio-app-key"
SEGMENT = 42


def member(i: int) -> dict:
    return {"id": f"seg-{i}", "email": f"seg-{i}@example.com", "cio_id": f"{i + 1:08x}"}


@pytest.fixture
def cio():
    with CustomerIoServer(APP_KEY) as server:
        yield server


@pytest.fixture
def workspace(cio, monkeypatch, db):
    monkeypatch.setenv("CIO_APP_KEY", APP_KEY)
    return workspace_save(
        data={
            "key": "main",
            "name": "Main workspace",
            "base_url": cio.url,
            "credentials": {"app_key": "env:CIO_APP_KEY"},
            "timeout_s": 5,
        }
    )


def segment_audience(key="vips", segment_id=SEGMENT, **extra):
    return audience_save(
        data={
            "key": key,
            "name": f"{key} from Customer.io",
            "source_kind": "customerio_segment",
            "source_settings": {"workspace": "main", "segment_id": segment_id},
            "cadence": "15m",
            **extra,
        }
    )


def snapshot(audience) -> set[str]:
    return set(SegmentMember.objects.filter(audience=audience).values_list("person__customer_id", flat=True))


def members(audience) -> set[str]:
    return set(Membership.objects.filter(audience=audience, exited_at__isnull=True).values_list("person__customer_id", flat=True))


def membership_queries(server) -> list[dict]:
    return [parse_qs(r["query"]) for r in server.request_log() if r["path"].endswith("/membership")]


# --- paging and mapping ---------------------------------------------------------------------


def test_pull_follows_the_cursor_through_every_page_and_creates_unknown_people(cio, workspace):
    cio.add_segment(SEGMENT, "Big spenders", (70_000, member))
    audience = segment_audience()
    Person.objects.create(customer_id="seg-5", email="already@example.com")

    pull = pull_segment(audience)

    queries = membership_queries(cio)
    assert len(queries) == math.ceil(70_000 / PAGE_LIMIT) == 3
    assert [q["limit"] for q in queries] == [[str(PAGE_LIMIT)]] * 3
    assert "start" not in queries[0]
    assert queries[1]["start"] != queries[2]["start"]
    assert (pull.members, pull.people_created, pull.unmapped, pull.requests, pull.throttled) == (70_000, 69_999, 0, 3, 0)
    assert pull.error == "" and pull.finished_at is not None
    assert SegmentMember.objects.filter(audience=audience).count() == 70_000
    created = Person.objects.get(customer_id="seg-69999")
    assert (created.email, created.cio_id) == ("seg-69999@example.com", f"{70_000:08x}")
    assert Person.objects.get(customer_id="seg-5").email == "already@example.com"  # known people are not overwritten

    (evaluation,) = evaluate_all(["vips"])
    assert evaluation.size == len(evaluation.entries) == 70_000


def test_members_map_by_id_then_email_then_cio_id_and_the_rest_are_counted(cio, workspace):
    Person.objects.create(customer_id="known")
    Person.objects.create(customer_id="ann-1", email="Ann@Example.com")
    Person.objects.create(customer_id="bob-1", email="bob@example.com", cio_id="cio-bob")
    Person.objects.create(customer_id="outsider", email="outsider@example.com")
    cio.add_segment(
        SEGMENT,
        "Mixed",
        [
            {"id": "known", "email": "changed@example.com", "cio_id": "c0"},
            {"id": "brand-new", "email": "new@example.com", "cio_id": "c1"},
            {"email": "  ANN@example.com ", "cio_id": "no-such-cio"},  # no id: by email, normalised
            {"email": "nobody@example.com", "cio_id": "cio-bob"},  # no id, unknown email: by cio_id
            {"email": "ghost@example.com"},  # unmapped
            {"cio_id": "zzz"},  # unmapped
            {"email": None, "cio_id": None},  # unmapped
        ],
    )
    audience = segment_audience()

    pull = pull_segment(audience)

    assert (pull.members, pull.people_created, pull.unmapped) == (7, 1, 3)
    assert snapshot(audience) == {"known", "brand-new", "ann-1", "bob-1"}
    new = Person.objects.get(customer_id="brand-new")
    assert (new.email, new.cio_id) == ("new@example.com", "c1")
    assert not Person.objects.filter(email__in=["ghost@example.com", "nobody@example.com"]).exists()
    evaluate_all(["vips"])
    assert members(audience) == {"known", "brand-new", "ann-1", "bob-1"}


# --- the snapshot and evaluation ------------------------------------------------------------


def test_the_snapshot_is_replaced_and_leavers_exit_through_the_outbox(cio, workspace, livelike, livelike_destination):
    cio.add_segment(SEGMENT, "Vips", [member(i) for i in range(20)])
    audience = segment_audience()
    sync_save(data={"key": "vips-livelike", "audience": "vips", "destination": "livelike"})

    (first,) = evaluate_all(["vips"])
    assert (len(first.entries), len(first.exits), first.size) == (20, 0, 20)
    deliver_destination(livelike_destination.pk, max_seconds=30)
    assert livelike.members("vips") == {f"seg-{i}" for i in range(20)}

    # three leave, two join
    cio.set_members(SEGMENT, [member(i) for i in range(3, 22)])
    (second,) = evaluate_all(["vips"])
    assert (len(second.entries), len(second.exits), second.size) == (2, 3, 19)
    assert snapshot(audience) == {f"seg-{i}" for i in range(3, 22)}
    assert members(audience) == {f"seg-{i}" for i in range(3, 22)}
    left = Membership.objects.filter(audience=audience, exited_at__isnull=False)
    assert set(left.values_list("person__customer_id", flat=True)) == {"seg-0", "seg-1", "seg-2"}
    exits = Delivery.objects.filter(sync__key="vips-livelike", action=Delivery.EXIT)
    assert sorted(exits.values_list("customer_id", flat=True)) == ["seg-0", "seg-1", "seg-2"]
    assert set(exits.values_list("state", flat=True)) == {Delivery.PENDING}
    assert not RemovalHold.objects.exists()

    summary = deliver_destination(livelike_destination.pk, max_seconds=30)
    assert (summary.sent, summary.rejected) == (5, 0)
    assert livelike.members("vips") == {f"seg-{i}" for i in range(3, 22)}
    assert set(exits.values_list("state", flat=True)) == {Delivery.SENT}
    assert livelike.exit_before_entry == 0 and livelike.duplicate_rows == 0

    # a pull that changes nothing changes nothing
    (third,) = evaluate_all(["vips"])
    assert (len(third.entries), len(third.exits), third.size) == (0, 0, 19)
    assert SourcePull.objects.filter(audience=audience).count() == 3


def test_a_segment_that_suddenly_returns_no_members_has_its_removals_held(cio, workspace, livelike, livelike_destination):
    """Five removals are below the share-based guard's minimum; an empty source is held anyway."""
    cio.add_segment(SEGMENT, "Vips", [member(i) for i in range(5)])
    audience = segment_audience()
    sync = sync_save(data={"key": "vips-livelike", "audience": "vips", "destination": "livelike"})
    evaluate_all(["vips"])
    deliver_destination(livelike_destination.pk, max_seconds=30)
    assert len(livelike.members("vips")) == 5

    cio.set_members(SEGMENT, [])
    (evaluation,) = evaluate_all(["vips"])
    assert (len(evaluation.exits), evaluation.size) == (5, 0)
    assert snapshot(audience) == set()
    hold = RemovalHold.objects.get(sync=sync)
    assert (hold.removals, hold.audience_size_before, hold.decision) == (5, 5, RemovalHold.PENDING)
    assert "no members" in hold.reason
    exits = Delivery.objects.filter(sync=sync, action=Delivery.EXIT)
    assert exits.count() == 5 and set(exits.values_list("state", flat=True)) == {Delivery.HELD}
    assert set(exits.values_list("hold", flat=True)) == {hold.pk}
    alert = Alert.objects.get(kind=Alert.MASS_REMOVAL, resolved_at__isnull=True)
    assert alert.sync == sync and alert.details["hold"] == hold.pk

    requests_before = len(livelike.request_log())
    summary = deliver_destination(livelike_destination.pk, max_seconds=30)
    assert summary.sent == 0
    assert len(livelike.request_log()) == requests_before
    assert len(livelike.members("vips")) == 5


# --- attributes -----------------------------------------------------------------------------


def attributes_of(customer_id: str) -> dict:
    return {"plan": "pro", "country": "FR", "email": f"{customer_id}@crm.example.com"}


def attribute_requests(server) -> list[dict]:
    return [r for r in server.request_log() if r["path"] == "/v1/customers/attributes"]


def test_no_attributes_are_fetched_when_no_sync_maps_an_attribute(workspace, livelike_destination):
    with CustomerIoServer(APP_KEY, attributes_for=attributes_of) as server:
        workspace.base_url = server.url
        workspace.save()
        server.add_segment(SEGMENT, "Vips", [member(i) for i in range(150)])
        segment_audience()
        # a sync that maps only person columns (email is read from the person, not fetched)
        sync_save(data={"key": "vips-livelike", "audience": "vips", "destination": "livelike", "fields": ["email"]})
        evaluate_all(["vips"])
        assert attribute_requests(server) == []
        assert Person.objects.get(customer_id="seg-1").attributes == {}


def test_attributes_are_fetched_for_mapped_fields_of_entering_people_only(workspace, livelike_destination):
    with CustomerIoServer(APP_KEY, attributes_for=attributes_of) as server:
        workspace.base_url = server.url
        workspace.save()
        server.add_segment(SEGMENT, "Vips", [member(i) for i in range(250)])
        audience = segment_audience()
        sync = sync_save(
            data={"key": "vips-livelike", "audience": "vips", "destination": "livelike", "fields": ["email", "plan"]}
        )

        evaluate_all(["vips"])
        calls = attribute_requests(server)
        assert len(calls) == 3 and sorted(c["rows"] for c in calls) == [50, 100, 100]
        assert server.counters()["attribute_ids_requested"] == 250
        person = Person.objects.get(customer_id="seg-7")
        assert person.attributes == {"plan": "pro"}  # mapped fields only, never the unmapped country
        assert person.email == "seg-7@example.com"  # a person column is not overwritten by attributes
        assert SourcePull.objects.get(audience=audience).attributes_fetched == 250

        summary = deliver_destination(livelike_destination.pk, max_seconds=30)
        assert summary.sent == 250
        sent = [row for batch in DeliveryBatch.objects.filter(sync=sync) for row in batch.rows]
        assert {row["fields"]["plan"] for row in sent} == {"pro"}

        # the next pull: 240 stay, 10 leave, 30 join; only the 30 entering are looked up
        server.set_members(SEGMENT, [member(i) for i in range(10, 280)])
        (evaluation,) = evaluate_all(["vips"])
        assert (len(evaluation.entries), len(evaluation.exits)) == (30, 10)
        later = attribute_requests(server)[3:]
        assert len(later) == 1 and later[0]["rows"] == 30
        assert Person.objects.get(customer_id="seg-279").attributes == {"plan": "pro"}


# --- rate limit and errors ------------------------------------------------------------------


def test_the_client_keeps_under_the_app_api_rate_limit(workspace, livelike_destination):
    """16 requests (one page, fifteen attribute calls) against a server enforcing 10/s."""
    with CustomerIoServer(APP_KEY, rate_limit_per_s=10, attributes_for=attributes_of) as server:
        workspace.base_url = server.url
        workspace.save()
        server.add_segment(SEGMENT, "Vips", [member(i) for i in range(1500)])
        audience = segment_audience()
        sync_save(data={"key": "vips-livelike", "audience": "vips", "destination": "livelike", "fields": ["plan"]})

        started = time.monotonic()
        pull = pull_segment(audience)
        took = time.monotonic() - started

        state = server.state()["counters"]
        assert pull.requests == state["requests"] == 16
        assert state["rate_limited"] == 0 and pull.throttled == 0
        assert server.max_requests_in_any_1s_window <= 11
        assert took >= 1.4  # 16 requests at 10 a second


def test_429_answers_are_waited_out_and_the_pull_completes(workspace, livelike_destination):
    faults = FaultPlan(rate=0.25, kinds=("429",), seed=7, retry_after=1)
    with CustomerIoServer(APP_KEY, rate_limit_per_s=10, faults=faults, attributes_for=attributes_of) as server:
        workspace.base_url = server.url
        workspace.save()
        server.add_segment(SEGMENT, "Vips", (1_200, member))
        audience = segment_audience()
        sync_save(data={"key": "vips-livelike", "audience": "vips", "destination": "livelike", "fields": ["plan"]})
        pull = pull_segment(audience)

        log = server.request_log()
        throttled = [r for r in log if r["status"] == 429]
        assert throttled, "the fault plan should have answered some requests with 429"
        assert pull.throttled == len(throttled) and pull.requests == len(log)
        assert pull.error == "" and pull.members == 1_200
        assert SegmentMember.objects.filter(audience=audience).count() == 1_200
        assert pull.attributes_fetched == 1_200
        assert server.counters()["attribute_ids_requested"] == 1_200  # each chunk answered once
        assert server.retry_after_violations == []
        assert server.max_requests_in_any_1s_window <= 11


def test_a_refused_app_key_raises_and_is_recorded_on_the_pull(cio, workspace):
    cio.add_segment(SEGMENT, "Vips", [member(i) for i in range(5)])
    audience = segment_audience()
    evaluate_all(["vips"])
    assert len(members(audience)) == 5

    cio.app_key = "rotated-key"
    # one failing source stops no other audience: this one is marked failing (and alerted) instead
    assert evaluate_all(["vips"]) == []
    audience.refresh_from_db()
    assert audience.evaluation_failed_at is not None
    assert audience.evaluation_error.startswith("TransportError: ") and "refused" in audience.evaluation_error
    failed = SourcePull.objects.filter(audience=audience).order_by("-pk").first()
    assert "refused" in failed.error and failed.finished_at is not None
    assert failed.requests == 1  # a 401 is not retried
    # nothing was replaced or evaluated: the last good snapshot and membership stand
    assert len(snapshot(audience)) == 5 and len(members(audience)) == 5


def test_an_unknown_segment_raises_with_the_api_s_message(cio, workspace):
    audience = segment_audience(segment_id=999)
    with pytest.raises(TransportError, match="segment not found"):
        pull_segment(audience)
    assert "segment not found" in SourcePull.objects.get(audience=audience).error


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, field, message",
    [
        ({"workspace": "nope", "segment_id": 3}, "source_settings", "no Customer.io workspace 'nope'"),
        ({"workspace": "main", "segment_id": "3"}, "source_settings", "segment_id"),
        ({"workspace": "main", "segment_id": 0}, "source_settings", "segment_id"),
        ({"workspace": "main", "segment_id": True}, "source_settings", "segment_id"),
        ({"workspace": "main"}, "source_settings", "segment_id"),
        ({"workspace": "main", "segment_id": 3, "query": "x"}, "source_settings", "query: unknown setting"),
        ("main:3", "source_settings", "must be a mapping"),
    ],
)
def test_audience_validation_of_source_settings(workspace, settings, field, message):
    with pytest.raises(ValidationError) as raised:
        audience_save(
            data={
                "key": "vips",
                "name": "Vips",
                "source_kind": "customerio_segment",
                "source_settings": settings,
                "cadence": "15m",
            }
        )
    assert any(message in m for m in raised.value.message_dict[field]), raised.value.message_dict


def test_a_segment_audience_cannot_be_realtime_nor_have_a_rule(workspace):
    with pytest.raises(ValidationError) as raised:
        audience_save(
            data={
                "key": "vips",
                "name": "Vips",
                "source_kind": "customerio_segment",
                "source_settings": {"workspace": "main", "segment_id": 3},
                "cadence": "realtime",
                "rule": {"event": "Order Completed", "within": "1d"},
            }
        )
    errors = raised.value.message_dict
    assert any("pulled on a schedule" in m for m in errors["cadence"])
    assert any("leave the rule out" in m for m in errors["rule"])
    # the default cadence is realtime, so leaving it out is refused too
    with pytest.raises(ValidationError) as raised:
        audience_save(
            data={
                "key": "vips",
                "name": "Vips",
                "source_kind": "customerio_segment",
                "source_settings": {"workspace": "main", "segment_id": 3},
            }
        )
    assert "cadence" in raised.value.message_dict
    assert segment_audience(segment_id=3).source_settings == {"workspace": "main", "segment_id": 3}


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_snapshot_is_written_alongside_the_paging(cio, monkeypatch):
    """On PostgreSQL the snapshot rows are written from a second connection while the next
    page is mapped; the result is the same as writing them inline (SQLite)."""
    monkeypatch.setenv("CIO_APP_KEY", APP_KEY)
    workspace_save(data={"key": "main", "name": "Main", "base_url": cio.url, "credentials": {"app_key": "env:CIO_APP_KEY"}})
    cio.add_segment(SEGMENT, "Big spenders", (65_000, member))
    audience = segment_audience()
    first = pull_segment(audience)
    assert first.members == 65_000 and first.error == ""
    assert SegmentMember.objects.filter(audience=audience).count() == 65_000
    cio.set_members(SEGMENT, (40_000, member))
    pull_segment(audience)
    assert snapshot(audience) == {f"seg-{i}" for i in range(40_000)}


def test_pages_stop_downloading_when_the_pull_stops_half_way():
    """The next pages are fetched in a thread from the start; a pull that fails (or whose
    snapshot cannot be read) must not leave that thread paging through the segment."""
    from syncs.sources import _Prefetch

    fetched = []

    def endless_pages():
        while True:
            fetched.append(len(fetched))
            yield [{"id": f"seg-{len(fetched)}"}]

    with pytest.raises(RuntimeError):
        with _Prefetch(endless_pages(), depth=2) as pages:
            for page in pages:
                assert page == [{"id": "seg-1"}]
                raise RuntimeError("the snapshot could not be written")
    assert not pages.thread.is_alive()
    stopped_at = len(fetched)
    time.sleep(0.3)
    assert len(fetched) == stopped_at <= 4  # the one in hand, two waiting, one being offered


def test_an_error_while_paging_reaches_the_pull():
    from syncs.sources import _Prefetch

    def failing_pages():
        yield [{"id": "seg-1"}]
        raise TransportError("Customer.io GET /v1/segments/7/membership: server error 500 after 5 tries")

    with _Prefetch(failing_pages()) as pages:
        received = []
        with pytest.raises(TransportError, match="server error 500"):
            for page in pages:
                received.append(page)
    assert received == [[{"id": "seg-1"}]] and not pages.thread.is_alive()
