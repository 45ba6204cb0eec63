"""Membership changes → outbox rows, in the evaluation's own transaction.

`audiences` announces every change on `membership_changed`; this module writes one Delivery
per enabled sync of the audience, holds mass removals for a person's decision (and, through
`removals`, those under the platform's minimum; an additive-only sync's exits are skipped), and
wakes the delivery worker once the transaction has committed.
"""

from __future__ import annotations

from django.db import connection, transaction
from django.utils import timezone

from audiences.models import Audience, Person

from . import holdouts, removals
from .alerts import alert_open
from .models import Alert, Delivery, RemovalHold, Sync
from .payload import payload_for

# Below this many removals a run is never held, whatever the share (a five-person cart
# audience losing three people at night is normal).
MIN_HELD_REMOVALS = 10
INSERT_CHUNK = 5000


def on_membership_changed(sender, evaluation, **kwargs):
    syncs = list(Sync.objects.filter(audience_id=evaluation.audience_id, enabled=True).select_related("audience", "destination"))
    if not syncs:
        return
    size_before = evaluation.size + len(evaluation.exits) - len(evaluation.entries)
    paid = holdouts.paid_holdout_for(syncs)
    in_force = {sync.pk: holdouts.holdouts_of(sync, paid) for sync in syncs}
    measured = any(in_force.values()) and len(evaluation.entries) and not evaluation.erasure
    customer_ids = (
        dict(Person.objects.filter(pk__in=list(evaluation.entries)).values_list("pk", "customer_id")) if measured else {}
    )
    sent_anywhere = set()
    for sync in syncs:
        hold = removal_hold_for(sync, evaluation, size_before)
        held = _held_entries(in_force[sync.pk], evaluation.entries, customer_ids)
        sent = [person_id for person_id in evaluation.entries if person_id not in held]
        sent_anywhere.update(sent)
        back = removals.came_back(sync, sent)  # their removal never went: the destination still has them
        write_deliveries(
            sync,
            Delivery.ENTER,
            [p for p in sent if p not in back] if back else sent,
            evaluation,
            held_out=False if in_force[sync.pk] else None,
        )
        for reason in sorted(set(held.values())):
            write_deliveries(
                sync, Delivery.ENTER, [p for p, r in held.items() if r == reason], evaluation, held_out=True, skipped=reason
            )
        held_exits = holdouts.held_out_exits(sync, evaluation.exits) if _may_hold_exits(sync, in_force, evaluation) else set()
        write_deliveries(
            sync,
            Delivery.EXIT,
            [p for p in evaluation.exits if p not in held_exits],
            evaluation,
            hold=hold,
            skipped=removals.ADDITIVE_ONLY if sync.additive_only else "",
        )
        write_deliveries(
            sync,
            Delivery.EXIT,
            sorted(held_exits),
            evaluation,
            held_out=True,
            skipped="held out: this person's entry was never sent, so there is nothing to remove",
        )
        removals.after_change(sync, evaluation)
    if measured:
        holdouts.record_on_memberships(
            evaluation.audience_id, evaluation.at, sent=sent_anywhere, held=set(customer_ids) - sent_anywhere
        )
    destination_ids = sorted({s.destination_id for s in syncs})
    transaction.on_commit(lambda: enqueue_delivery(destination_ids))


def _held_entries(in_force, person_ids, customer_ids) -> dict[int, str]:
    """Person id → the reason the holdout gives for not sending them."""
    if not in_force:
        return {}
    held = {}
    for person_id in person_ids:
        if person_id in customer_ids and (reason := holdouts.decide(in_force, customer_ids[person_id])):
            held[person_id] = reason
    return held


def _may_hold_exits(sync, in_force, evaluation) -> bool:
    """Only a sync that holds people out now, or did once, has exits to skip for it."""
    if not len(evaluation.exits) or sync.is_suppression:
        return False
    return (
        bool(in_force[sync.pk])
        or Delivery.objects.filter(sync=sync, action=Delivery.ENTER, initial=False, held_out=True).exists()
    )


def removal_hold_for(sync: Sync, evaluation, size_before: int) -> RemovalHold | None:
    if sync.additive_only or not evaluation.full or not evaluation.exits:
        return None
    removals = len(evaluation.exits)
    if evaluation.size == 0 and sync.audience.source_kind != Audience.RULES:
        reason = "the source returned no members at all"
    elif removals >= MIN_HELD_REMOVALS and removals > sync.removal_guard_share * size_before:
        reason = f"{removals:,} of {size_before:,} members ({removals / size_before:.0%}) would be removed at once"
    else:
        return None
    hold = RemovalHold.objects.create(sync=sync, reason=reason, removals=removals, audience_size_before=size_before)
    alert_open(
        key=f"mass_removal:hold:{hold.pk}",
        kind=Alert.MASS_REMOVAL,
        sync=sync,
        audience=sync.audience,
        message=f"{sync.key}: removals held: {reason}. Approve or discard them on the sync page.",
        details={"hold": hold.pk, "removals": removals, "size_before": size_before},
    )
    return hold


def write_deliveries(
    sync: Sync,
    action: str,
    person_ids,
    evaluation,
    *,
    hold: RemovalHold | None = None,
    held_out: bool | None = None,
    skipped: str = "",
) -> int:
    """`skipped`: the rows are never sent, for this reason (a holdout's); `held_out`: the
    holdout's decision, kept on the rows for the lift."""
    if not len(person_ids):
        return 0
    state = Delivery.SKIPPED if skipped else Delivery.HELD if hold else Delivery.PENDING
    marks = {"held_out": held_out, "last_error": skipped}
    if evaluation.erasure or evaluation.triggered_at or len(person_ids) <= INSERT_CHUNK:
        return _write_with_orm(sync, action, person_ids, evaluation, state, hold, marks)
    return _write_with_sql(sync, action, person_ids, evaluation, state, hold, marks)


def _write_with_orm(sync, action, person_ids, evaluation, state, hold, marks) -> int:
    now = timezone.now()
    people = Person.objects.in_bulk(list(person_ids))
    rows = []
    # in person order, as the SQL path writes them: a file or a batch reads the same on every database
    for person_id in sorted(person_ids):
        person = people.get(person_id)
        if person is None:
            continue
        rows.append(
            Delivery(
                sync=sync,
                person=person,
                customer_id=person.customer_id,
                action=action,
                triggered_at=evaluation.triggered(person_id),
                changed_at=evaluation.at,
                created_at=now,
                next_attempt_at=now,
                state=state,
                hold=hold,
                **marks,
                # the person is about to be erased: take what must be sent now
                payload=payload_for(sync, person) if evaluation.erasure else None,
            )
        )
    Delivery.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


def _write_with_sql(sync, action, person_ids, evaluation, state, hold, marks) -> int:
    """A first evaluation can bring a million entries: INSERT ... SELECT, in chunks."""
    adapt = connection.ops.adapt_datetimefield_value
    now = timezone.now()
    delivery = connection.ops.quote_name(Delivery._meta.db_table)
    person = connection.ops.quote_name(Person._meta.db_table)
    written = 0
    with connection.cursor() as cursor:
        for start in range(0, len(person_ids), INSERT_CHUNK):
            chunk = list(person_ids[start : start + INSERT_CHUNK])
            cursor.execute(
                f"INSERT INTO {delivery} (sync_id, person_id, customer_id, action, triggered_at, changed_at, created_at, "
                "state, attempts, next_attempt_at, last_error, hold_id, initial, held_out) "
                f"SELECT %s, p.id, p.customer_id, %s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s FROM {person} p "
                f"WHERE p.id IN ({', '.join(['%s'] * len(chunk))}) ORDER BY p.id",
                [
                    sync.pk,
                    action,
                    adapt(evaluation.at),
                    adapt(evaluation.at),
                    adapt(now),
                    state,
                    adapt(now),
                    marks["last_error"],
                    hold.pk if hold else None,
                    False,
                    marks["held_out"],
                    *chunk,
                ],
            )
            written += cursor.rowcount
    return written


def enqueue_delivery(destination_ids) -> None:
    """Wake the senders of these destinations. A live sender looks for new rows itself every
    few milliseconds: a task for it would only queue behind the evaluations in the worker."""
    from django_q.tasks import async_task

    from .delivery import lease_is_live

    for destination_id in destination_ids:
        if not lease_is_live(destination_id):
            async_task("syncs.tasks.deliver", destination_id, task_name=f"deliver to destination {destination_id}")


def queue_current_members(sync: Sync) -> int:
    """A new sync starts from the audience as it is: an entry for everyone already in it, or
    their later exits would reach the destination before any entry. Its holdout applies to
    them too (it has sent none of them yet)."""
    from audiences.models import Membership

    adapt = connection.ops.adapt_datetimefield_value
    now = adapt(timezone.now())
    delivery = connection.ops.quote_name(Delivery._meta.db_table)
    membership = connection.ops.quote_name(Membership._meta.db_table)
    person = connection.ops.quote_name(Person._meta.db_table)
    in_force = holdouts.holdouts_of(sync, holdouts.paid_holdout_for([sync]))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {delivery} (sync_id, person_id, customer_id, action, triggered_at, changed_at, created_at, "
            "state, attempts, next_attempt_at, last_error, initial, held_out) "
            f"SELECT %s, m.person_id, p.customer_id, %s, %s, m.entered_at, %s, %s, 0, %s, '', %s, %s FROM {membership} m "
            f"JOIN {person} p ON p.id = m.person_id WHERE m.audience_id = %s AND m.exited_at IS NULL ORDER BY m.person_id",
            [sync.pk, Delivery.ENTER, now, now, Delivery.PENDING, now, True, False if in_force else None, sync.audience_id],
        )
        queued = cursor.rowcount
    if in_force:
        queued -= _hold_out_current_members(sync, in_force)
    # a member held out of every other sync whom this one sends is no longer held out anywhere
    Membership.objects.current().filter(audience_id=sync.audience_id, held_out=True).exclude(
        person_id__in=Delivery.objects.filter(sync=sync, held_out=True).values("person_id")
    ).update(held_out=False)
    if queued:
        transaction.on_commit(lambda: enqueue_delivery([sync.destination_id]))
    return queued


def _hold_out_current_members(sync: Sync, in_force) -> int:
    """The new sync's rows for the people its holdout picks become skipped, with the reason."""
    rows = list(Delivery.objects.filter(sync=sync).values_list("person_id", "customer_id"))
    held = _held_entries(in_force, [p for p, _ in rows], dict(rows))
    for reason in sorted(set(held.values())):
        people = [p for p, r in held.items() if r == reason]
        for start in range(0, len(people), INSERT_CHUNK):
            Delivery.objects.filter(sync=sync, person_id__in=people[start : start + INSERT_CHUNK]).update(
                state=Delivery.SKIPPED, held_out=True, last_error=reason
            )
    return len(held)
