"""The named places where `audiences` tells the rest of the project that something changed.

`syncs` listens here; `audiences` never imports `syncs`.
"""

from django.dispatch import Signal

# Sent after the ingest transaction commits, with `person_ids`: people whose events or
# attributes changed. Realtime audiences re-evaluate exactly these people.
people_changed = Signal()


def announce_people_changed(person_ids):
    if person_ids:
        people_changed.send(sender="audiences", person_ids=tuple(person_ids))


# Sent inside the evaluation transaction with `evaluation` (audiences.evaluation.Evaluation):
# who entered and who left one audience. The sync side writes its outbox rows in the same
# transaction, so membership and outbox never disagree.
membership_changed = Signal()
