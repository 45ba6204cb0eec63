"""Ingest writes three index entries fewer per event: the single-column indexes Django gives a
foreign key are, on these two tables, prefixes of composite indexes they already have
((person, name, occurred_at) and the unique (source, message_id) on events, the unique
(person, name) on aggregates). Written by hand. Only the indexes go: altering the fields
would also drop and re-add (and so re-check, locked, against every event) the foreign keys."""

import django.db.models.deletion
from django.db import migrations, models

# Django's names for them, the same on SQLite and PostgreSQL
INDEXES = [
    ("audiences_event_person_id_6c5f0f44", "audiences_event", "person_id"),
    ("audiences_event_source_id_b8ae8c60", "audiences_event", "source_id"),
    ("audiences_eventstat_person_id_39b6dfd3", "audiences_eventstat", "person_id"),
]


class Migration(migrations.Migration):
    dependencies = [("audiences", "0009_window_expiry")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    sql=[f'DROP INDEX IF EXISTS "{name}"' for name, _, _ in INDEXES],
                    reverse_sql=[f'CREATE INDEX "{name}" ON "{table}" ("{column}")' for name, table, column in INDEXES],
                )
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="person",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to="audiences.person",
                    ),
                ),
                migrations.AlterField(
                    model_name="event",
                    name="source",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="events",
                        to="audiences.source",
                    ),
                ),
                migrations.AlterField(
                    model_name="eventstat",
                    name="person",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="event_stats",
                        to="audiences.person",
                    ),
                ),
            ],
        )
    ]
