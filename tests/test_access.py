import pytest
from django.contrib.auth.models import Group, User

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "path", ["/", "/admin/", "/admin/audiences/person/", "/admin/audiences/event/", "/admin/audiences/source/"]
)
def test_anonymous_requests_go_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_dashboards_own_root_leads_to_the_home_page(client):
    """/dashboard/ typed by hand answered a bare 404; the home page is the admin's index."""
    client.force_login(make_user("Viewer"))
    response = client.get("/dashboard/")
    assert (response.status_code, response["Location"]) == (302, "/admin/")


def test_login_page_is_open(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert b"Password" in response.content


def make_user(role):
    user = User.objects.create_user(role.lower().replace(" ", "-"), password="pw-for-tests-1", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/audiences/person/", "/admin/audiences/event/", "/admin/audiences/eventstat/"]
)
def test_viewer_can_read(client, path):
    client.force_login(make_user("Viewer"))
    assert client.get(path).status_code == 200


def test_viewer_cannot_change_a_person(client):
    from audiences.models import Person

    person = Person.objects.create(customer_id="p1")
    client.force_login(make_user("Viewer"))
    response = client.post(f"/admin/audiences/person/{person.pk}/change/", {"is_test": "on"})
    assert response.status_code == 403
    person.refresh_from_db()
    assert person.is_test is False


def test_retention_manager_can_mark_a_test_account_but_not_create_sources(client):
    from audiences.models import Person

    person = Person.objects.create(customer_id="p1")
    client.force_login(make_user("Retention manager"))
    response = client.post(f"/admin/audiences/person/{person.pk}/change/", {"is_test": "on"})
    assert response.status_code == 302
    person.refresh_from_db()
    assert person.is_test is True
    assert client.get("/admin/audiences/source/add/").status_code == 403


def test_person_search_is_exact_on_id_email_and_phone(admin_client):
    from audiences.models import Person

    Person.objects.create(customer_id="cus_1", email="Ann@Example.com", phone="+14155550100")
    Person.objects.create(customer_id="cus_2", email="bob@example.com")
    for term in ("cus_1", "ann@example.com", "+14155550100"):
        response = admin_client.get("/admin/audiences/person/", {"q": term})
        assert b"cus_1" in response.content and b"cus_2" not in response.content, term


def test_dashboard_shows_that_no_worker_is_running(admin_client):
    response = admin_client.get("/admin/")
    assert b"Worker not running" in response.content


@pytest.mark.parametrize("path", ["/admin/", "/dashboard/alerts/", "/dashboard/people/", "/dashboard/review/weekly/"])
def test_a_staff_account_without_a_role_sees_no_dashboard(client, path):
    user = User.objects.create_user("norole", password="pw-for-tests-1", is_staff=True)
    client.force_login(user)
    assert client.get(path).status_code == 403
