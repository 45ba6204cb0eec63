"""The one dependency graph and order: saved audiences and config items alike, dependencies
first and ties by key, the same order for any subset, and a cycle named from its first key."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiences.dependencies import (
    DependencyCycle,
    dependencies_first,
    dependency_graph,
    dependency_order,
    find_cycle,
    item_graph,
)
from audiences.models import Audience
from audiences.services import audience_save, priority_group_save

ANYONE = {"attribute": "x", "exists": True}


def test_dependencies_come_first_and_ties_go_by_key():
    graph = {"c": {"a"}, "b": set(), "a": {"z"}, "z": set()}
    assert dependencies_first(graph) == ["b", "z", "a", "c"]


def test_keys_outside_the_graph_are_not_placed():
    assert dependencies_first({"b": {"elsewhere"}, "a": {"b"}}) == ["b", "a"]


def test_a_cycle_is_named_from_its_first_key():
    graph = {"y": {"z"}, "x": {"y"}, "z": {"x"}, "a": set()}
    assert find_cycle(graph) == ["x", "y", "z", "x"]
    with pytest.raises(DependencyCycle) as refused:
        dependencies_first(graph)
    assert refused.value.keys == ["x", "y", "z", "x"]
    assert str(refused.value) == "dependency cycle: x → y → z → x"
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), st.sets(st.sampled_from("abcdefgh")), min_size=1))
def test_an_acyclic_graph_is_ordered_dependencies_first_and_a_cyclic_one_is_refused(edges):
    graph = {key: {d for d in deps if d < key} for key, deps in edges.items()}  # acyclic: reads earlier letters only
    order = dependencies_first(graph)
    assert sorted(order) == sorted(graph)
    assert all(order.index(d) < order.index(key) for key, deps in graph.items() for d in deps if d in graph)
    cyclic = {key: set(deps) for key, deps in edges.items()}
    cycle = find_cycle(cyclic)
    if cycle is None:
        dependencies_first(cyclic)
    else:
        assert cycle[0] == cycle[-1] and all(b in cyclic[a] for a, b in zip(cycle, cycle[1:]))
        with pytest.raises(DependencyCycle):
            dependencies_first(cyclic)


def test_config_items_read_exclusions_rules_and_higher_ranks_among_the_items():
    items = {
        "first": {"key": "first", "priority_group": "g", "priority_rank": 1},
        "second": {"key": "second", "priority_group": "g", "priority_rank": 2, "exclusions": ["buyers"]},
        "buyers": {"key": "buyers", "rule": {"in_audience": "not_in_the_file"}},
        "other_group": {"key": "other_group", "priority_group": "h", "priority_rank": 3},
    }
    assert item_graph(items) == {"first": set(), "second": {"first", "buyers"}, "buyers": set(), "other_group": set()}


@pytest.mark.django_db
def test_a_subset_is_ordered_by_its_places_among_all_audiences():
    """b and z read nothing in the subset {b, z}, yet b reads a, which reads z: z before b."""
    audience_save(data={"key": "z", "name": "Z", "rule": ANYONE})
    audience_save(data={"key": "a", "name": "A", "cadence": "1h", "rule": {"in_audience": "z"}})
    audience_save(data={"key": "b", "name": "B", "rule": {"in_audience": "a"}})
    assert [x.key for x in dependency_order(Audience.objects.all())] == ["z", "a", "b"]
    assert [x.key for x in dependency_order(Audience.objects.filter(key__in=["b", "z"]))] == ["z", "b"]


@pytest.mark.django_db
def test_saved_audiences_read_the_higher_ranks_of_their_group():
    priority_group_save(data={"key": "g", "name": "G"})
    for rank, key in enumerate(["gold", "silver", "bronze"], start=1):
        audience_save(data={"key": key, "name": key, "rule": ANYONE, "priority_group": "g", "priority_rank": rank})
    assert dependency_graph() == {"gold": set(), "silver": {"gold"}, "bronze": {"gold", "silver"}}


@pytest.mark.django_db
def test_an_audience_moves_below_another_of_its_group_without_a_cycle():
    """The audience's old rank (above silver) is not kept in silver's dependencies while its new
    one (below silver) is checked."""
    priority_group_save(data={"key": "g", "name": "G"})
    audience_save(data={"key": "gold", "name": "Gold", "rule": ANYONE, "priority_group": "g", "priority_rank": 1})
    audience_save(data={"key": "silver", "name": "Silver", "rule": ANYONE, "priority_group": "g", "priority_rank": 2})
    audience_save(instance=Audience.objects.get(key="gold"), data={"priority_group": "g", "priority_rank": 3})
    assert dependency_graph() == {"silver": set(), "gold": {"silver"}}
