import base64
import gzip
import json

import pytest
from django.conf import settings

from audiences.ingest import source_create
from audiences.models import SCOPES, Event, EventStat, Person
from audiences.roles import RETENTION_MANAGER, VIEWER


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with an empty cache. Against Redis (`make test-postgres`) the cache
    outlives the test and is read by the workers tests start: an expiry waiter's lease set by
    one test kept the next test's worker from starting one (its exit came 25 s late). Only this
    run's keys go (its prefix): another run may share the Redis database. The embedded
    default's cache is a table of the test database, emptied with it."""
    if settings.REDIS_URL:
        import redis

        client = redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(f"{settings.CACHE_KEY_PREFIX}:*"):
            client.delete(key)


def logged_in(client, role: str, username: str):
    """`client`, logged in as a new staff account that has one role."""
    from django.contrib.auth.models import Group, User

    account = User.objects.create_user(username, password="pw-for-tests-1", is_staff=True)
    account.groups.add(Group.objects.get(name=role))
    client.force_login(account)
    return client


@pytest.fixture
def manager_client(db, client):
    return logged_in(client, RETENTION_MANAGER, "rita")


@pytest.fixture
def viewer_client(db, client):
    return logged_in(client, VIEWER, "viewer")


def basic_auth(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class IngestClient:
    """Posts to the ingest API the way an SDK would."""

    def __init__(self, client, source, key):
        self.client = client
        self.source = source
        self.key = key

    def post(self, path, body, *, key=None, raw=False, gzip_body=False, headers=None):
        data = body if raw else json.dumps(body).encode()
        extra = {"HTTP_AUTHORIZATION": basic_auth(self.key if key is None else key)}
        if gzip_body:
            data = gzip.compress(data)
            extra["HTTP_CONTENT_ENCODING"] = "gzip"
        for name, value in (headers or {}).items():
            extra["HTTP_" + name.upper().replace("-", "_")] = value
        return self.client.generic("POST", path, data, content_type="application/json", **extra)

    def batch(self, messages, **kwargs):
        return self.post("/ingest/v1/batch", {"batch": messages}, **kwargs)

    def track_api(self, method, path, body=None, *, site_id=None, key=None):
        auth = basic_auth(site_id or self.source.name, self.key if key is None else key)
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        return self.client.generic(
            method, f"/track/api/v1/{path}", data, content_type="application/json", HTTP_AUTHORIZATION=auth
        )


@pytest.fixture
def source_and_key(db):
    """A server key (every scope): the tests that use it erase people through the Track API too;
    what a browser key may not do is tests/audiences/test_key_scopes.py."""
    return source_create(name="web", scopes=SCOPES)


@pytest.fixture
def ingest(client, source_and_key):
    source, key = source_and_key
    return IngestClient(client, source, key)


def store_counts():
    return (Person.objects.count(), Event.objects.count(), EventStat.objects.count())


@pytest.fixture
def nothing_written(db):
    """Use as `with nothing_written(): ...` to assert the person store did not change."""
    import contextlib

    @contextlib.contextmanager
    def check():
        before = store_counts()
        yield
        assert store_counts() == before, "a refused request wrote to the person store"

    return check
