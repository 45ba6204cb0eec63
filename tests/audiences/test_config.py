from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from audiences.config import export
from audiences.models import Audience, IdentifierPolicy, NamingConvention, PriorityGroup

pytestmark = pytest.mark.django_db

DEMO = Path(__file__).resolve().parents[2] / "audiences" / "demo_config.yaml"
DEMO_AUDIENCES = ["cart_0_2h", "cart_2_24h", "lapsed_60_90d", "recent_purchasers_24h", "serum_viewers_7d", "vip_do_not_discount"]
NOT_A_DURATION = '"2x" is not a duration such as 15m, 2h, 7d, 4w'


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(*args) -> str:
    with pytest.raises(CommandError) as failure:
        run(*args)
    assert failure.value.returncode == 1
    return str(failure.value)


def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def audience_item(data: dict, key: str) -> dict:
    return next(item for item in data["audiences"] if item["key"] == key)


@pytest.fixture
def write(tmp_path):
    """write(data or text, name) -> the path of a YAML file holding it."""

    def write(content, name="config.yaml") -> str:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return str(path)

    return write


def snapshot():
    """Everything apply_config can write, history included."""
    return {
        model.__name__: sorted(map(repr, model.objects.values()))
        for model in (NamingConvention, IdentifierPolicy, PriorityGroup, Audience, Audience.exclusions.through)
    } | {
        f"history of {model.__name__}": model.history.count()
        for model in (NamingConvention, IdentifierPolicy, PriorityGroup, Audience)
    }


def counts():
    return [m.objects.count() for m in (NamingConvention, IdentifierPolicy, PriorityGroup, Audience)]


# --- applying a good file --------------------------------------------------------------------


def test_the_demo_file_creates_everything():
    out = run("apply_config", str(DEMO))
    assert counts() == [1, 3, 1, 6]
    assert "11 object(s) changed" in out
    assert "create audiences.cart_0_2h" in out.splitlines()

    convention = NamingConvention.objects.get()
    assert convention.is_default and convention.example == "paid_cart_0-2h_nopurch"
    assert sorted(Audience.objects.values_list("key", flat=True)) == DEMO_AUDIENCES

    cart = Audience.objects.get(key="cart_0_2h")
    assert cart.rule == {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed"}
    assert [a.key for a in cart.exclusions.all()] == ["recent_purchasers_24h"]
    assert (cart.priority_group.key, cart.priority_rank) == ("cart_abandoners", 1)
    assert cart.identifier_policy.key == "email_sha256" and cart.identifier_policy.hash_sha256 is True
    assert cart.name_tokens == {"channel": "paid", "intent": "cart", "window": "0-2h", "exclusions": "nopurch"}
    assert Audience.objects.get(key="cart_2_24h").priority_rank == 2

    suppression = Audience.objects.get(key="recent_purchasers_24h")
    assert suppression.purpose == Audience.SUPPRESSION and suppression.exclusions.count() == 0
    assert Audience.objects.get(key="lapsed_60_90d").cadence == "1h"
    assert Audience.objects.get(key="serum_viewers_7d").rule["where"] == {"category": "serum"}
    assert IdentifierPolicy.objects.get(key="phone_e164").field == "phone"


def test_applying_the_same_file_twice_changes_nothing():
    run("apply_config", str(DEMO))
    before = snapshot()
    out = run("apply_config", str(DEMO))
    assert out.strip() == "no changes: the database matches the file"
    assert snapshot() == before


def test_an_export_applies_as_a_no_op(write, tmp_path):
    run("apply_config", str(DEMO))
    before = snapshot()
    exported = tmp_path / "exported.yaml"
    call_command("export_config", "--output", str(exported), stdout=StringIO(), stderr=StringIO())
    assert yaml.safe_load(exported.read_text()) == export()
    assert yaml.safe_load(run("export_config")) == export()
    assert run("apply_config", str(exported)).strip() == "no changes: the database matches the file"
    assert snapshot() == before


def test_an_export_recreates_the_same_configuration_elsewhere(tmp_path):
    run("apply_config", str(DEMO))
    exported = tmp_path / "exported.yaml"
    exported.write_text(run("export_config"))
    before = export()
    Audience.objects.all().delete()
    NamingConvention.objects.all().delete()
    IdentifierPolicy.objects.all().delete()
    PriorityGroup.objects.all().delete()
    run("apply_config", str(exported))
    assert export() == before


# --- --check ---------------------------------------------------------------------------------


def test_check_prints_the_plan_and_writes_nothing():
    before = snapshot()
    out = run("apply_config", str(DEMO), "--check")
    lines = out.splitlines()
    assert "create naming_conventions.retention" in lines
    assert "create priority_groups.cart_abandoners" in lines
    assert sum(line.startswith("create audiences.") for line in lines) == 6
    assert lines[-1] == "11 object(s) would change (check only; nothing written)"
    assert snapshot() == before and counts() == [0, 0, 0, 0]


def test_check_of_changes_and_deletions_writes_nothing(write):
    run("apply_config", str(DEMO))
    data = demo()
    audience_item(data, "cart_0_2h")["description"] = "Changed."
    audience_item(data, "cart_0_2h")["cadence"] = "5m"
    data["audiences"] = [a for a in data["audiences"] if a["key"] != "serum_viewers_7d"]
    data["audiences"].append(
        {"key": "browsers_1d", "name": "onsite_browse_1d_none", "rule": {"event": "Product Viewed", "within": "1d"}}
    )
    data["identifier_policies"] = [p for p in data["identifier_policies"] if p["key"] != "phone_e164"]
    before = snapshot()

    lines = run("apply_config", write(data), "--check").splitlines()

    assert lines == [
        "delete identifier_policies.phone_e164",
        "change audiences.cart_0_2h (cadence, description)",
        "create audiences.browsers_1d",
        "delete audiences.serum_viewers_7d",
        "4 object(s) would change (check only; nothing written)",
    ]
    assert snapshot() == before
    assert Audience.objects.get(key="cart_0_2h").description == "High urgency, higher bids."


def test_check_refuses_a_bad_file_like_apply_does(write):
    data = demo()
    audience_item(data, "cart_0_2h")["rule"] = {"event": "Added to Cart", "within": "2x"}
    message = refused("apply_config", write(data), "--check")
    assert f"audiences[cart_0_2h].rule: within: {NOT_A_DURATION}" in message
    assert counts() == [0, 0, 0, 0]


# --- declarative sections --------------------------------------------------------------------


def test_an_audience_removed_from_the_file_is_planned_as_delete_and_deleted(write):
    run("apply_config", str(DEMO))
    data = demo()
    data["audiences"] = [a for a in data["audiences"] if a["key"] != "serum_viewers_7d"]
    path = write(data)
    assert "delete audiences.serum_viewers_7d" in run("apply_config", path, "--check").splitlines()
    assert Audience.objects.filter(key="serum_viewers_7d").exists()

    out = run("apply_config", path)
    assert out.splitlines() == ["delete audiences.serum_viewers_7d", "1 object(s) changed"]
    assert not Audience.objects.filter(key="serum_viewers_7d").exists()
    assert Audience.objects.count() == 5


def test_removing_a_suppression_audience_with_the_audiences_that_use_it(write):
    run("apply_config", str(DEMO))
    data = demo()
    data["audiences"] = [audience_item(data, "vip_do_not_discount")]
    out = run("apply_config", write(data))
    assert sorted(line for line in out.splitlines() if line.startswith("delete")) == [
        f"delete audiences.{key}" for key in DEMO_AUDIENCES if key != "vip_do_not_discount"
    ]
    assert list(Audience.objects.values_list("key", flat=True)) == ["vip_do_not_discount"]


def test_an_empty_section_deletes_everything_in_it(write):
    run("apply_config", str(DEMO))
    run("apply_config", write("audiences: []\n"))
    assert counts() == [1, 3, 1, 0]


def test_a_priority_group_still_used_by_audiences_is_not_deleted(write):
    run("apply_config", str(DEMO))
    data = demo()
    data["priority_groups"] = []
    path = write(data)
    assert refused_with_nothing_written(path) == (
        f"{path}: priority_groups[cart_abandoners]: 'cart_abandoners' is used by cart_0_2h, cart_2_24h; change those first"
    )
    assert Audience.objects.get(key="cart_0_2h").priority_group.key == "cart_abandoners"


def test_an_identifier_policy_still_used_by_audiences_is_not_deleted(write):
    run("apply_config", str(DEMO))
    data = demo()
    data["identifier_policies"] = [p for p in data["identifier_policies"] if p["key"] != "customer_id"]
    path = write(data)
    assert refused_with_nothing_written(path) == (
        f"{path}: identifier_policies[customer_id]: 'customer_id' is used by serum_viewers_7d; change those first"
    )


def test_a_group_and_a_policy_go_once_no_audience_uses_them(write):
    run("apply_config", str(DEMO))
    data = demo()
    data["priority_groups"] = []
    data["identifier_policies"] = [p for p in data["identifier_policies"] if p["key"] != "customer_id"]
    for item in data["audiences"]:
        item.pop("priority_group", None)
        item.pop("priority_rank", None)
        item["identifier_policy"] = "email_sha256"
    run("apply_config", write(data))
    assert counts() == [1, 2, 0, 6]
    assert not Audience.objects.filter(priority_group__isnull=False).exists()
    assert run("apply_config", write(data)).strip() == "no changes: the database matches the file"


def test_a_section_left_out_of_the_file_is_left_alone(write):
    run("apply_config", str(DEMO))
    before = snapshot()
    data = {"priority_groups": [{"key": "cart_abandoners", "name": "Cart stages"}]}
    out = run("apply_config", write(data))
    assert out.splitlines() == ["change priority_groups.cart_abandoners (description, name)", "1 object(s) changed"]
    after = snapshot()
    for name in ("NamingConvention", "IdentifierPolicy", "Audience", "Audience_exclusions"):
        assert after[name] == before[name]
    assert PriorityGroup.objects.get().name == "Cart stages"
    assert Audience.objects.get(key="cart_2_24h").priority_group.key == "cart_abandoners"


def test_an_empty_file_changes_nothing(write):
    run("apply_config", str(DEMO))
    before = snapshot()
    assert run("apply_config", write("# nothing yet\n")).strip() == "no changes: the database matches the file"
    assert snapshot() == before


# --- refused files: file, section, key and field, and nothing written -----------------------


def refused_with_nothing_written(path) -> str:
    before = snapshot()
    message = refused("apply_config", path)
    assert snapshot() == before, "a refused file wrote to the database"
    return message


def test_a_bad_rule_names_file_section_key_field_and_path(write):
    data = demo()
    audience_item(data, "cart_0_2h")["rule"] = {"all": [{"event": "Added to Cart", "within": "2x"}]}
    path = write(data, "bad.yaml")
    message = refused_with_nothing_written(path)
    assert message == f"{path}: audiences[cart_0_2h].rule: all[0].within: {NOT_A_DURATION}"
    assert counts() == [0, 0, 0, 0]  # not even the conventions, policies and groups that were fine


def test_a_rule_over_its_bounds_is_refused_with_its_path(write):
    data = demo()
    audience_item(data, "cart_0_2h")["rule"] = {"all": [{"attribute": "vip_tier", "in": [f"t{n}" for n in range(5000)]}]}
    path = write(data, "huge.yaml")
    message = refused_with_nothing_written(path)
    assert message == f"{path}: audiences[cart_0_2h].rule: all[0].in: has 5,000 values; a list takes at most 1,000"


def test_an_unknown_exclusion_is_refused(write):
    data = demo()
    audience_item(data, "serum_viewers_7d")["exclusions"] = ["recent_purchasers_24h", "nobody"]
    path = write(data)
    assert refused_with_nothing_written(path) == f"{path}: audiences[serum_viewers_7d].exclusions: there is no audience 'nobody'"


def test_an_activation_audience_cannot_be_an_exclusion(write):
    data = demo()
    audience_item(data, "serum_viewers_7d")["exclusions"] = ["cart_0_2h"]
    path = write(data)
    assert refused_with_nothing_written(path) == (
        f"{path}: audiences[serum_viewers_7d].exclusions: "
        "'cart_0_2h' is an activation audience; only suppression audiences can be excluded"
    )


def test_a_rank_clash_is_refused(write):
    run("apply_config", str(DEMO))
    data = demo()
    audience_item(data, "cart_2_24h")["priority_rank"] = 1
    audience_item(data, "vip_do_not_discount")["description"] = "A good change in a refused file."
    path = write(data)
    assert refused_with_nothing_written(path) == (
        f"{path}: audiences[cart_2_24h].priority_rank: rank 1 in 'cart_abandoners' is taken by 'cart_0_2h'"
    )
    assert Audience.objects.get(key="cart_2_24h").priority_rank == 2
    assert Audience.objects.get(key="vip_do_not_discount").description.startswith("Full-price")


def test_two_audiences_swap_ranks_in_one_file(write):
    run("apply_config", str(DEMO))
    data = demo()
    audience_item(data, "cart_0_2h")["priority_rank"] = 2
    audience_item(data, "cart_2_24h")["priority_rank"] = 1
    out = run("apply_config", write(data))
    assert "change audiences.cart_0_2h (priority_rank)" in out and "change audiences.cart_2_24h (priority_rank)" in out
    ranks = dict(Audience.objects.filter(priority_group__key="cart_abandoners").values_list("key", "priority_rank"))
    assert ranks == {"cart_0_2h": 2, "cart_2_24h": 1}
    # the history says what each audience went from and to
    older, newer = Audience.history.filter(key="cart_0_2h").order_by("-history_id")[:2][::-1]
    assert (older.priority_rank, newer.priority_rank) == (1, 2)
    assert run("apply_config", write(data)) == "no changes: the database matches the file\n"


def test_a_leaving_audience_s_rank_can_be_taken_by_another_in_the_same_file(write):
    run("apply_config", str(DEMO))
    data = demo()
    data["audiences"] = [a for a in data["audiences"] if a["key"] != "cart_0_2h"]
    audience_item(data, "cart_2_24h")["priority_rank"] = 1
    out = run("apply_config", write(data))
    assert "delete audiences.cart_0_2h" in out
    assert not Audience.objects.filter(key="cart_0_2h").exists()
    assert Audience.objects.get(key="cart_2_24h").priority_rank == 1


def test_a_name_that_breaks_the_naming_convention_is_refused(write):
    data = demo()
    audience_item(data, "cart_0_2h")["name"] = "tiktok_cart_0-2h_nopurch"
    path = write(data)
    assert refused_with_nothing_written(path) == (
        f"{path}: audiences[cart_0_2h].name: 'tiktok_cart_0-2h_nopurch': {{channel}} is 'tiktok' but must be "
        "one of paid, onsite, social, email, all "
        "(expected {channel}_{intent}_{window}_{exclusions}, e.g. paid_cart_0-2h_nopurch)"
    )


def test_every_problem_of_a_file_is_reported_at_once(write):
    data = demo()
    audience_item(data, "cart_0_2h")["rule"] = {"event": "Added to Cart", "within": "2x"}
    audience_item(data, "lapsed_60_90d")["cadence"] = "hourly"
    data["identifier_policies"][1]["default_region"] = "XX"
    path = write(data)
    lines = refused_with_nothing_written(path).splitlines()
    assert lines == [
        f"{path}: identifier_policies[phone_e164].default_region: 'XX' is not a region code such as US, GB, DE",
        f"{path}: audiences[cart_0_2h].rule: within: {NOT_A_DURATION}",
        f"{path}: audiences[lapsed_60_90d].cadence: 'hourly' is not a cadence: use realtime, an interval such as "
        "15m, 2h, 1d, or a cron expression such as '0 * * * *'",
    ]


def test_a_yaml_syntax_error_gives_the_line(write):
    path = write("audiences:\n  - key: cart\n    name: [unclosed\n    rule: {event: A}\n")
    message = refused_with_nothing_written(path)
    assert message.startswith(f"{path}: line ")
    assert "line 4, column" in message


def test_an_unknown_section_is_refused(write):
    path = write({"segments": [{"key": "x"}], "audiences": []})
    message = refused_with_nothing_written(path)
    assert message.startswith(f"{path}: segments: unknown section; expected ")
    assert "audiences" in message and "naming_conventions" in message


@pytest.mark.parametrize(
    "content, problem",
    [
        ("audiences:\n  - {name: paid_cart_2h_none}\n", "audiences[0]: each entry needs a key"),
        ("audiences:\n  - {key: a, name: A, rule: {event: A}}\n  - just a text\n", "audiences[1]: each entry needs a key"),
        ("audiences:\n  - {key: 7, name: A}\n", "audiences[0]: each entry needs a key"),
        (
            "audiences:\n  - {key: a, name: A, rule: {event: A}}\n  - {key: a, name: B, rule: {event: B}}\n",
            "audiences[a]: listed twice",
        ),
        ("audiences: {key: a}\n", "audiences: must be a list"),
        ("- audiences\n", "the top level must be a mapping of sections such as audiences:"),
    ],
)
def test_a_malformed_file_is_refused(write, content, problem):
    path = write(content)
    assert refused_with_nothing_written(path) == f"{path}: {problem}"


def test_a_missing_file_is_refused(tmp_path):
    path = tmp_path / "nowhere.yaml"
    assert refused("apply_config", str(path)) == f"{path}: no such file"


def test_a_dependency_cycle_is_refused_with_the_cycle(write):
    data = {
        "audiences": [
            {"key": "a", "name": "A", "rule": {"in_audience": "b"}},
            {"key": "b", "name": "B", "rule": {"all": [{"event": "X"}, {"in_audience": "a"}]}},
        ]
    }
    path = write(data)
    assert refused_with_nothing_written(path) == f"{path}: audiences[a]: this would make a dependency cycle: a → b → a"


def test_a_cycle_through_exclusions_is_refused_with_the_cycle(write):
    data = {
        "audiences": [
            {"key": "x", "name": "X", "purpose": "suppression", "rule": {"event": "X"}, "exclusions": ["y"]},
            {"key": "y", "name": "Y", "purpose": "suppression", "rule": {"event": "Y"}, "exclusions": ["z"]},
            {"key": "z", "name": "Z", "purpose": "suppression", "rule": {"event": "Z"}, "exclusions": ["x"]},
        ]
    }
    path = write(data)
    assert refused_with_nothing_written(path) == f"{path}: audiences[x]: this would make a dependency cycle: x → y → z → x"


def test_a_cycle_through_an_existing_audience_is_refused(write):
    run("apply_config", write({"audiences": [{"key": "a", "name": "A", "rule": {"event": "X"}}]}, "first.yaml"))
    data = {
        "audiences": [
            {"key": "a", "name": "A", "rule": {"in_audience": "b"}},
            {"key": "b", "name": "B", "rule": {"in_audience": "a"}},
        ]
    }
    message = refused_with_nothing_written(write(data))
    assert "dependency cycle" in message and "a → b → a" in message
    assert Audience.objects.get(key="a").rule == {"event": "X"}


def test_audiences_are_created_in_dependency_order_whatever_the_file_order(write):
    data = demo()
    data["audiences"].reverse()  # users of recent_purchasers_24h and cart_0_2h come before them
    data["audiences"].insert(0, {"key": "c", "name": "paid_vip_any_none", "rule": {"in_audience": "b"}})
    data["audiences"].insert(0, {"key": "b", "name": "paid_vip_7d_none", "rule": {"in_audience": "vip_do_not_discount"}})
    run("apply_config", write(data))
    assert Audience.objects.count() == 8
    assert [a.key for a in Audience.objects.get(key="cart_2_24h").exclusions.all()] == ["recent_purchasers_24h"]
    assert Audience.objects.get(key="c").rule == {"in_audience": "b"}


# --- history ---------------------------------------------------------------------------------


def test_actor_is_recorded_in_the_history(write, django_user_model):
    ann = django_user_model.objects.create(username="ann")
    run("apply_config", str(DEMO), "--actor", "ann")
    assert Audience.history.first().history_user == ann
    assert set(Audience.history.values_list("history_user", flat=True)) == {ann.pk}
    assert NamingConvention.history.get().history_user == ann

    data = demo()
    audience_item(data, "cart_0_2h")["description"] = "Changed without an actor."
    run("apply_config", write(data))
    latest = Audience.history.filter(key="cart_0_2h").first()
    assert latest.description == "Changed without an actor." and latest.history_user is None


def test_a_setting_deleted_by_a_file_is_recorded_with_its_actor(write, django_user_model):
    ann = django_user_model.objects.create(username="ann")
    data = demo()
    data["identifier_policies"].append({"key": "spare", "name": "Spare", "field": "customer_id"})
    run("apply_config", write(data), "--actor", "ann")
    data["identifier_policies"].pop()
    run("apply_config", write(data), "--actor", "ann")
    assert not IdentifierPolicy.objects.filter(key="spare").exists()
    deleted = IdentifierPolicy.history.get(key="spare", history_type="-")
    assert deleted.history_user == ann


def test_an_unknown_actor_is_refused_before_anything_is_written():
    assert refused("apply_config", str(DEMO), "--actor", "nobody") == "--actor: there is no user 'nobody'"
    assert counts() == [0, 0, 0, 0]
