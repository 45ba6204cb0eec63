"""The outbox is a queue: each row is updated two or three times within seconds of its insert,
and each claim reads the head of the partial index of pending rows, where the dead entries of
rows already sent gather until a vacuum (a million-row backlog waits for 200,000 dead rows at
PostgreSQL's default): it is vacuumed at 2 % (audiences/autovacuum.py)."""

from django.db import migrations

from audiences.autovacuum import vacuumed_as_a_queue


class Migration(migrations.Migration):
    dependencies = [("syncs", "0011_retention")]

    operations = [vacuumed_as_a_queue("syncs", "Delivery")]
