"""Holdouts: a share of an audience's members that a sync never sends, to measure lift against.

Who is held out is decided by the customer id and a salt alone (SHA-256 of `salt:customer_id`
read as a number in [0, 1), held out below the share), so a person stays in or out across
re-entries, restarts and machines, and nothing has to be stored to decide again. What was
decided is stored all the same, when the entry is written (syncs.outbox): a held-out entry is
a skipped delivery whose reason names the holdout, its exit is skipped too, and the
membership says whether the entry was sent anywhere. The lift (syncs.lift) reads those
records, never the current setting.

A change of share or salt applies to people entering from then on. People already in the
audience keep what they had until they leave: a person's treatment never changes in the
middle of a membership, so every entry the lift counts was either held out from entry to exit
or sent from entry to exit. Removing newly held-out people would not make them a control
(they have been reached already), and sending newly released people would spoil the control
they belong to.

Two holdouts can apply to a sync: its own (`Sync.holdout_share`, any activation sync) and the
global paid holdout (`GlobalHoldout`), which covers the ad-platform kinds only: those whose
spec says `paid_media` (Meta, Google, TikTok, and any plug-in kind that sets it). LiveLike and
webhooks stay out of it: LiveLike is the owned, in-app channel whose rewards the team runs
anyway, and a webhook may feed an operational system (a CRM, fulfilment) that must see
everyone; either can carry a holdout of its own. Suppression syncs never hold anyone out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.apps import apps as global_apps

from audiences.models import Audience, Membership

from .destinations.registry import spec_for
from .models import Delivery, GlobalHoldout, Sync

# A holdout above this would be an experiment on the campaign, not a control group beside it
# (and 10 typed for 10 % must not hold out everyone).
MAX_SHARE = 0.5
SALT_MAX = 64
CHUNK = 5000


def position(salt: str, customer_id: str) -> float:
    """Where a person falls in [0, 1) for this salt: the first 64 bits of SHA-256(salt:id)."""
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def share_text(share: float) -> str:
    """0.1 → '10 %', 0.125 → '12.5 %'."""
    return f"{share * 100:.4g} %"


@dataclass(frozen=True)
class Holdout:
    """One holdout in force: who it is (for the reason), its share and its salt."""

    label: str
    share: float
    salt: str

    def holds_out(self, customer_id: str) -> bool:
        return position(self.salt, customer_id) < self.share

    @property
    def reason(self) -> str:
        return f"held out: {self.label} ({share_text(self.share)}, salt {self.salt!r}) is never sent"

    @property
    def summary(self) -> str:
        return f"{self.label[0].upper()}{self.label[1:]}: {share_text(self.share)} (salt {self.salt!r})"


def sync_salt(sync: Sync) -> str:
    return sync.holdout_salt or sync.key


def global_holdout() -> GlobalHoldout:
    """The stored row (migrate creates it), or an unsaved one holding nobody out."""
    return GlobalHoldout.objects.filter(key=GlobalHoldout.KEY).first() or GlobalHoldout()


def is_paid(sync: Sync) -> bool:
    """Whether the global paid holdout covers this sync: its destination kind's spec says so."""
    return spec_for(sync.destination.kind).paid_media


def holdouts_of(sync: Sync, paid: GlobalHoldout | None) -> list[Holdout]:
    """The holdouts in force on a sync now: its own, and the global one for a paid kind.
    None on a suppression sync, whatever share it stores."""
    if sync.is_suppression:
        return []
    found = []
    if sync.holdout_share > 0:
        found.append(Holdout("this sync's holdout", sync.holdout_share, sync_salt(sync)))
    if paid is not None and paid.share > 0 and is_paid(sync):
        found.append(Holdout("the global paid holdout", paid.share, paid.salt or GlobalHoldout.KEY))
    return found


def paid_holdout_for(syncs) -> GlobalHoldout | None:
    """The global holdout, read only when one of these syncs could be covered by it."""
    if any(is_paid(s) and not s.is_suppression for s in syncs):
        return global_holdout()
    return None


def decide(holdouts: list[Holdout], customer_id: str) -> str | None:
    """The reason this person is held out (the first holdout that picks them), or None."""
    for holdout in holdouts:
        if holdout.holds_out(customer_id):
            return holdout.reason
    return None


# --- what the outbox asks -------------------------------------------------------------------


def held_out_exits(sync: Sync, person_ids) -> set[int]:
    """People leaving whose entry into this sync was held out: their latest entry row says so."""
    held = set()
    ids = list(person_ids)
    for start in range(0, len(ids), CHUNK):
        latest = {}
        for person_id, flag in (
            Delivery.objects.filter(sync=sync, action=Delivery.ENTER, person_id__in=ids[start : start + CHUNK])
            .order_by("id")
            .values_list("person_id", "held_out")
        ):
            latest[person_id] = flag
        held |= {person_id for person_id, flag in latest.items() if flag}
    return held


def record_on_memberships(audience_id: int, entered_at, sent: set[int], held: set[int]) -> None:
    """Each entry's membership says whether it went anywhere (False) or nowhere (True)."""
    for flag, people in ((False, sorted(sent)), (True, sorted(held))):
        for start in range(0, len(people), CHUNK):
            Membership.objects.current().filter(
                audience_id=audience_id, entered_at=entered_at, person_id__in=people[start : start + CHUNK]
            ).update(held_out=flag)


# --- settings -------------------------------------------------------------------------------


def share_problem(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SHARE:
        return f"must be a share from 0 to {MAX_SHARE:g}, such as 0.1 for 10 % (0 holds nobody out)"
    return None


def salt_problem(value) -> str | None:
    if not isinstance(value, str) or len(value) > SALT_MAX or any(c.isspace() for c in value):
        return f"must be a text of at most {SALT_MAX} characters without spaces (blank: the default)"
    return None


def suppression_problem(audience: Audience | None, share) -> str | None:
    if audience is not None and audience.purpose == Audience.SUPPRESSION and share:
        return (
            "a suppression sync never holds anyone out: everyone in a suppression audience must reach the "
            "destination, or the people it protects are not protected; set the holdout on the activation syncs"
        )
    return None


def ensure_global_holdout(sender=None, apps=global_apps, using="default", **kwargs):
    """After every migrate (and every flush of a test database): the one row exists. Written
    with the real model, so that its creation starts the setting history."""
    try:
        apps.get_model("syncs", "GlobalHoldout")
    except LookupError:  # migrated back to before holdouts
        return
    GlobalHoldout.objects.using(using).get_or_create(key=GlobalHoldout.KEY)
