"""The audience editor shows each error beside the field it is about, not in a list at the top."""

import re

import pytest

from audiences.models import Audience

pytestmark = pytest.mark.django_db

FORM = {
    "name": "",
    "key": "carts",
    "description": "",
    "purpose": "activation",
    "cadence": "realtime",
    "identifier_policy": "",
    "priority_group": "",
    "priority_rank": "",
    "rule_yaml": "event: Added to Cart\nwithin: 2h\n",
    "enabled": "on",
}


def field_block(page: str, field_id: str) -> str:
    """The `<div class="field">` that holds the input with this id."""
    start = page.rindex('<div class="field">', 0, page.index(f'id="{field_id}"'))
    end = page.index('<div class="field">', start + 1) if '<div class="field">' in page[start + 1 :] else len(page)
    return page[start:end]


def test_a_bad_cadence_is_reported_beside_the_cadence(manager_client):
    response = manager_client.post(
        "/dashboard/audiences/new/", {**FORM, "name": "paid_cart_0-2h_nopurch", "cadence": "every tuesday"}
    )
    assert response.status_code == 400 and not Audience.objects.exists()
    page = response.content.decode()
    cadence = field_block(page, "id_cadence")
    assert re.search(r'<p class="field-errors" id="cadence-error">.*is not a cadence', cadence)
    assert 'aria-invalid="true"' in cadence
    top = page[page.index('class="errornote"') : page.index("<fieldset>")]
    assert "is not a cadence" not in top, "the error is not listed again at the top"
