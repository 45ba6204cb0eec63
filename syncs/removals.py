"""Removals a sync does not send, or not yet: a sync that only adds never removes anyone, and
a removal that would take the audience downstream under its platform's minimum
(`DestinationSpec.min_audience_size`: TikTok 1,000, Meta 100) is held until it is back over it.

**Additive only.** The sync's exits are written skipped, with the reason ADDITIVE_ONLY, so the
person page says why the person is still there and no lag is counted for them; an exit queued
before the switch is skipped when it comes up for sending.

**The minimum** is judged on Downstream's count of the people downstream: the members whose
entry has gone (members now, less the entries still waiting: a removal, urgent, may well reach
the platform before them) and the people whose removal has not gone yet (held, for the minimum
or as a mass removal). A change's removals go as far as that count stays at or over the
minimum, oldest first; the rest wait in the sync's one pending RemovalHold whose reason starts
with UNDER_MINIMUM, with an UNDER_MINIMUM alert. They go by themselves once the count allows,
looked at whenever the audience changes and whenever entries of the sync are acknowledged: a
removal is no judgement call (as a mass removal may be a broken source), the platform just
cannot take it yet, and a person who left should leave as soon as it can. A person may discard
them on the sync page (those people stay downstream) or approve them (sent at once, minimum or
not: Meta, say, takes such a removal, and its audience is then too small to use). Someone who
comes back into the audience while their removal is held cancels it: the platform still has
them, so neither the removal nor the return is sent. The count is high by the people the platform never had (held
out, skipped, rejected) or never matched: the platform's read-back is what tells.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audiences.models import Audience

from .alerts import alert_open, alert_resolve
from .destinations.registry import spec_for
from .models import Alert, Delivery, RemovalHold, Sync

ADDITIVE_ONLY = "the sync is additive only"
UNDER_MINIMUM = "under the platform's minimum"
CAME_BACK = (
    "came back into the audience before this removal could go: the destination still has them, so neither "
    "this removal nor their return is sent"
)
CHUNK = 5000


def minimum_of(sync: Sync) -> int | None:
    return spec_for(sync.destination.kind).min_audience_size


def is_minimum_hold(hold: RemovalHold) -> bool:
    return hold.reason.startswith(UNDER_MINIMUM)


def minimum_hold(sync: Sync) -> RemovalHold | None:
    """The sync's pending hold of removals waiting for the platform's minimum, if any."""
    return (
        RemovalHold.objects.filter(sync=sync, decision=RemovalHold.PENDING, reason__startswith=UNDER_MINIMUM)
        .order_by("pk")
        .first()
    )


def alert_key(hold: RemovalHold) -> str:
    return f"under_minimum:hold:{hold.pk}"


def came_back(sync: Sync, person_ids) -> set[int]:
    """Of the people entering, those whose removal is held for the minimum: that removal is
    cancelled here, and their entry must not be written."""
    if not len(person_ids) or not minimum_of(sync):
        return set()
    hold = minimum_hold(sync)
    if hold is None:
        return set()
    held = dict(hold.deliveries.filter(state=Delivery.HELD).values_list("person_id", "pk"))
    back = {person_id for person_id in person_ids if person_id in held}
    ids = [held[person_id] for person_id in back]
    for start in range(0, len(ids), CHUNK):
        Delivery.objects.filter(pk__in=ids[start : start + CHUNK], state=Delivery.HELD).update(
            state=Delivery.CANCELLED, last_error=CAME_BACK
        )
    return back


def after_change(sync: Sync, evaluation) -> None:
    """A change's exits are queued: hold those the minimum keeps, release what it allows now."""
    if not sync.additive_only:
        keep_minimum(
            sync, sync.deliveries.pending().filter(action=Delivery.EXIT, changed_at=evaluation.at), members=evaluation.size
        )


def keep_minimum(sync: Sync, new: QuerySet | None = None, *, members: int | None = None) -> None:
    """Hold what of `new` (exits just queued or just approved, pending) would take the audience
    downstream under the minimum, and release what held removals the count allows now, oldest
    first. `members`: the audience's size now, where the caller has it."""
    minimum = minimum_of(sync)
    if not minimum:
        return
    hold = minimum_hold(sync)
    n_new = new.count() if new is not None else 0
    if hold is None and not n_new:
        return
    if members is None:
        members = Audience.objects.filter(pk=sync.audience_id).values_list("current_size", flat=True).first() or 0
    with transaction.atomic():
        _apply(sync, hold, new, n_new, members=members, minimum=minimum)


def _apply(sync, hold, new, n_new, *, members, minimum) -> None:
    waiting = sync.deliveries.pending().filter(action=Delivery.ENTER).count()
    pending_holds = RemovalHold.objects.filter(sync=sync, decision=RemovalHold.PENDING)
    held_all = Delivery.objects.filter(hold__in=pending_holds, state=Delivery.HELD).count()
    held = hold.deliveries.filter(state=Delivery.HELD).order_by("id") if hold else Delivery.objects.none()
    n_held = held.count() if hold else 0
    downstream = members - waiting + held_all + n_new
    room = max(0, downstream - minimum)
    released = min(n_held, room)
    if released:
        last = held.values_list("id", flat=True)[released - 1]
        held.filter(id__lte=last).update(state=Delivery.PENDING, next_attempt_at=timezone.now())
    kept = n_new - min(n_new, room - released)
    if kept:
        if hold is None:
            hold = RemovalHold.objects.create(
                sync=sync,
                removals=0,
                audience_size_before=downstream,
                reason=f"{UNDER_MINIMUM}: {label(sync)} needs at least {minimum:,} people in an audience, and sending "
                "these would leave fewer; they go by themselves once it is back over",
            )
        first = new.order_by("id").values_list("id", flat=True)[n_new - kept]
        new.filter(id__gte=first).update(state=Delivery.HELD, hold=hold)
    still = n_held - released + kept
    if still:
        _held(sync, hold, still, minimum=minimum, there=downstream - released - (n_new - kept))
    elif hold is not None:
        _done(sync, hold, released, minimum=minimum)


def label(sync: Sync) -> str:
    return spec_for(sync.destination.kind).label


def _held(sync: Sync, hold: RemovalHold, still: int, *, minimum: int, there: int) -> None:
    if hold.removals != still:
        hold.removals = still
        hold.save(update_fields=["removals"])
    removals = f"{still:,} removal{'' if still == 1 else 's'}"
    alert_open(
        key=alert_key(hold),
        kind=Alert.UNDER_MINIMUM,
        sync=sync,
        audience=sync.audience,
        message=f"{sync.key}: {removals} held, as {label(sync)} needs at least {minimum:,} people in an audience and "
        f"sending them would leave fewer in {sync.audience.name}'s (about {there:,} there by Downstream's count). "
        f"They go by themselves once it is back over {minimum:,}; discard them on the sync page to keep those "
        "people downstream.",
        details={"hold": hold.pk, "removals": still, "minimum": minimum, "downstream": there},
    )


def _done(sync: Sync, hold: RemovalHold, released: int, *, minimum: int) -> None:
    """Nothing is held any more: the hold is settled (approved, by nobody) and its alert resolved."""
    hold.decision, hold.decided_at = RemovalHold.APPROVED, timezone.now()
    hold.save(update_fields=["decision", "decided_at"])
    if released:
        resolution = (
            f"{sync.audience.name} is back over {label(sync)}'s minimum of {minimum:,}: the "
            f"{released:,} removal{'' if released == 1 else 's'} still held went out."
        )
    else:
        resolution = f"Everyone whose removal was held came back into {sync.audience.name}: nothing is left to remove."
    alert_resolve(key=alert_key(hold), resolution=resolution)


def decided(hold: RemovalHold, *, approve: bool, actor=None) -> None:
    """A person decided a hold on the sync page. An approved mass removal may still take the
    audience under the platform's minimum: those removals wait for it as any other; an approved
    minimum hold is sent at once, as the person asked."""
    if approve and not is_minimum_hold(hold):
        keep_minimum(hold.sync, hold.deliveries.pending())
    alert_resolve(
        key=alert_key(hold),
        resolution=(f"{actor or 'A person'} {'approved' if approve else 'discarded'} the held removals on the sync page."),
    )
