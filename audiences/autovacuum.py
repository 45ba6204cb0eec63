"""Queue tables on PostgreSQL: rows that live seconds to minutes, taken off the head of an index
(the outbox's pending rows, window expiry's due times). Each claim reads that head, where the
dead entries of rows already taken gather until a vacuum; PostgreSQL's default autovacuum waits
for 20 % of a table to be dead. A queue table is vacuumed at 2 %. For migrations."""

from django.db import migrations

OPTIONS = "autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02"


def vacuumed_as_a_queue(app_label: str, model_name: str) -> migrations.RunPython:
    """The migration operation that sets (and on the way back resets) a queue table's options."""

    def table(apps, schema_editor):
        return schema_editor.quote_name(apps.get_model(app_label, model_name)._meta.db_table)

    def set_options(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER TABLE {table(apps, schema_editor)} SET ({OPTIONS})")

    def reset_options(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f"ALTER TABLE {table(apps, schema_editor)} RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor)"
            )

    return migrations.RunPython(set_options, reset_options)
