"""A 403 keeps the page's user menu: who is signed in, change password, log out."""

import pytest
from django.contrib.auth.models import Group, User

from audiences.roles import VIEWER

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role", [VIEWER, None])
def test_a_refused_page_keeps_the_user_menu(client, role):
    account = User.objects.create_user("vera", password="pw-for-tests-1", is_staff=True)
    if role:
        account.groups.add(Group.objects.get(name=role))
    client.force_login(account)
    response = client.get("/dashboard/audiences/new/")
    assert response.status_code == 403
    page = response.content.decode()
    assert '<div id="user-tools">' in page and "<strong>vera</strong>" in page
    assert 'id="logout-form"' in page and "/admin/password_change/" in page
    assert "Not allowed" in page


def test_a_refused_page_for_nobody_signed_in_has_no_user_menu(client, db):
    response = client.get("/dashboard/audiences/new/")
    assert response.status_code in (302, 403)
    assert '<div id="user-tools">' not in response.content.decode()
