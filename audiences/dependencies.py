"""Which audiences an audience reads, and the one order they are taken in.

An audience depends on its exclusions, on the audiences its rule names (`in_audience`) and on
the higher-ranked audiences of its priority group. The dependencies are a graph {key: keys it
reads}, built from saved audiences (`dependency_graph`) or from the items of a config file
before they exist (`item_graph`); `dependencies_first` sorts any such graph, ties by key, and
`find_cycle` names a cycle the way every message shows it (first key == last).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from graphlib import CycleError, TopologicalSorter

from . import rules as r
from .models import Audience


class DependencyCycle(ValueError):
    def __init__(self, keys: list[str]):
        self.keys = keys
        super().__init__("dependency cycle: " + " → ".join(keys))


def rule_dependencies(rule) -> set[str]:
    """Keys of the audiences a rule names; none for an empty or invalid rule (its validation
    reports it)."""
    if not rule:
        return set()
    try:
        return r.referenced_audiences(r.parse_rule(rule))
    except r.RuleError:
        return set()


def dependencies(audience: Audience, *, rule=None, exclusion_keys=None, group_higher_keys=None) -> set[str]:
    """Keys of the audiences whose membership this one reads. What is not given is read from
    the audience (its exclusions, its group's higher ranks as saved)."""
    rule = audience.rule if rule is None else rule
    deps = rule_dependencies(rule) if audience.source_kind == Audience.RULES else set()
    if exclusion_keys is None:
        exclusion_keys = [a.key for a in audience.exclusions.all()] if audience.pk else []
    deps |= set(exclusion_keys)
    if group_higher_keys is None and audience.priority_group_id and audience.priority_rank is not None:
        group_higher_keys = Audience.objects.filter(
            priority_group_id=audience.priority_group_id, priority_rank__lt=audience.priority_rank
        ).values_list("key", flat=True)
    deps |= set(group_higher_keys or ())
    return deps


def dependency_graph(audiences: Iterable[Audience] | None = None) -> dict[str, set[str]]:
    """{key: keys it reads} of these audiences (all when not given). A group's higher ranks are
    taken among the audiences given, so an audience left out (one being saved with a new rank)
    does not keep its old place in the others' dependencies."""
    audiences = list(audiences if audiences is not None else Audience.objects.prefetch_related("exclusions"))
    ranks: dict[int, list[tuple[int, str]]] = {}
    for a in audiences:
        if a.priority_group_id and a.priority_rank is not None:
            ranks.setdefault(a.priority_group_id, []).append((a.priority_rank, a.key))

    def higher(a: Audience) -> list[str]:
        if not (a.priority_group_id and a.priority_rank is not None):
            return []
        return [key for rank, key in ranks[a.priority_group_id] if rank < a.priority_rank]

    return {a.key: dependencies(a, group_higher_keys=higher(a)) for a in audiences}


def item_graph(items: dict[str, dict]) -> dict[str, set[str]]:
    """{key: keys it reads} of a config file's audience items (dicts, by key), among those items."""

    def ranked(item) -> bool:
        return bool(item.get("priority_group")) and isinstance(item.get("priority_rank"), int)

    def deps(item) -> set[str]:
        found = set(item.get("exclusions") or []) | rule_dependencies(item.get("rule"))
        if ranked(item):
            found |= {
                key
                for key, other in items.items()
                if ranked(other)
                and other["priority_group"] == item["priority_group"]
                and other["priority_rank"] < item["priority_rank"]
            }
        return found & items.keys()

    return {key: deps(item) for key, item in items.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A dependency cycle as a list of keys (first == last), or None. Keys are visited in order,
    so the same graph always names the same cycle, from its first key."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(key):
        state[key] = 1
        stack.append(key)
        for dep in sorted(graph.get(key, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[key] = 2
        return None

    for key in sorted(graph):
        if key not in state:
            found = visit(key)
            if found:
                return found
    return None


def dependencies_first(graph: dict[str, set[str]]) -> list[str]:
    """Every key of the graph after the keys it reads (those of the graph), and among the keys
    whose dependencies are all placed, the first by key. Raises DependencyCycle."""
    sorter = TopologicalSorter({key: deps & graph.keys() for key, deps in graph.items()})
    try:
        sorter.prepare()
    except CycleError:
        raise DependencyCycle(find_cycle(graph))
    ready = list(sorter.get_ready())
    heapq.heapify(ready)
    order = []
    while ready:
        key = heapq.heappop(ready)
        order.append(key)
        sorter.done(key)
        for unblocked in sorter.get_ready():
            heapq.heappush(ready, unblocked)
    return order


def dependency_order(audiences) -> list[Audience]:
    """Dependencies first, in one order for every subset: the place each audience has among all
    audiences (`dependencies_first` of the whole graph). Evaluation and erasure lock audience
    rows in this order, and because it is the same order whichever audiences a pass takes (the
    realtime ones, the due ones, the ones a person is in), no two of them wait on each other in
    a circle (a deadlock on PostgreSQL). A subset is never ordered on its own: an audience
    outside it can put one of its audiences after another (b reads a, a reads z: z before b)."""
    audiences = list(audiences)
    place = {key: n for n, key in enumerate(dependencies_first(dependency_graph()))}
    return sorted(audiences, key=lambda a: (place.get(a.key, len(place)), a.key))
