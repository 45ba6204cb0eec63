"""Window expiry's due times are a queue: every tick deletes the rows at the head of the due-time
index and writes the next ones, so most of the table turns over within a day while staying the
same size; the default autovacuum waits for 20 % of it to be dead. It is vacuumed at 2 %
(audiences/autovacuum.py)."""

from django.db import migrations

from audiences.autovacuum import vacuumed_as_a_queue


class Migration(migrations.Migration):
    dependencies = [("audiences", "0012_membership_fewer_indexes")]

    operations = [vacuumed_as_a_queue("audiences", "WindowExpiry")]
