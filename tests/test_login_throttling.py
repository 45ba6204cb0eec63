"""Logins are throttled per user name and address (django-axes): after the failure limit the
right password is refused too, with a message; other users and other addresses carry on; a
superuser unlocks by deleting the attempt in the admin."""

import pytest
from django.conf import settings
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "the-right-password-7"
ADDRESS = "127.0.0.2"
OTHER_ADDRESS = "127.0.0.3"


def log_in(client, username, password, address=ADDRESS):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/" and "_auth_user_id" in response.client.session


@pytest.fixture
def users(db):
    return (
        User.objects.create_superuser("admin", password=PASSWORD),
        User.objects.create_user("manager", password=PASSWORD, is_staff=True),
    )


def lock_out_admin(client):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        refused = log_in(client, "admin", "wrong-password")
        assert not logged_in(refused)


def test_the_failure_limit_and_cool_off_come_from_the_environment_with_defaults():
    assert settings.AXES_FAILURE_LIMIT == 5
    assert settings.AXES_COOLOFF_TIME.total_seconds() == 15 * 60
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]


def test_after_five_wrong_passwords_the_right_one_is_refused_with_a_message(client, users):
    lock_out_admin(client)
    response = log_in(client, "admin", PASSWORD)
    assert response.status_code == 429
    assert not logged_in(response)
    text = response.content.decode()
    assert "Too many failed logins for admin from this address" in text
    assert "Try again in 15 minutes" in text
    assert "_auth_user_id" not in client.session


def test_other_users_and_other_addresses_are_not_locked_out(client, users):
    lock_out_admin(client)
    assert logged_in(log_in(client, "manager", PASSWORD))  # another user from the same address
    client.logout()
    assert logged_in(log_in(client, "admin", PASSWORD, address=OTHER_ADDRESS))  # the same user elsewhere


def test_a_superuser_unlocks_by_deleting_the_attempt_in_the_admin(client, users):
    from axes.models import AccessAttempt

    lock_out_admin(client)
    attempt = AccessAttempt.objects.get(username="admin", ip_address=ADDRESS)
    unlocker = User.objects.create_superuser("engineer", password=PASSWORD)
    client.force_login(unlocker)
    page = client.get("/admin/axes/accessattempt/")
    assert page.status_code == 200 and b"Locked Out" in page.content
    deleted = client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    client.logout()
    assert logged_in(log_in(client, "admin", PASSWORD))


def test_a_retention_manager_cannot_unlock(client, users):
    from axes.models import AccessAttempt
    from django.contrib.auth.models import Group

    from audiences.roles import RETENTION_MANAGER

    lock_out_admin(client)
    attempt = AccessAttempt.objects.get(username="admin")
    manager = users[1]
    manager.groups.add(Group.objects.get(name=RETENTION_MANAGER))
    client.force_login(manager)
    assert client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AccessAttempt.objects.filter(pk=attempt.pk).exists()


def test_behind_proxies_logins_count_against_the_address_the_outermost_proxy_saw(rf, settings):
    from config.login import client_address

    request = rf.post(LOGIN, REMOTE_ADDR="127.0.0.9", HTTP_X_FORWARDED_FOR="127.0.0.66, 127.0.0.5")
    assert client_address(request) == "127.0.0.9"  # no proxy configured: a header is not trusted
    settings.PROXY_COUNT = 1
    assert client_address(request) == "127.0.0.5"  # what the client wrote itself (.66) is never read
    settings.PROXY_COUNT = 2
    assert client_address(request) == "127.0.0.66"
