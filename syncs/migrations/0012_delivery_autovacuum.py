"""The outbox is a queue: each row is updated two or three times within seconds of its insert,
and each claim reads the head of the partial index of pending rows, where the dead entries of
rows already sent gather until a vacuum. PostgreSQL's default autovacuum waits for 20 % of a
table to be dead (200,000 rows of a million-row backlog); the outbox is vacuumed at 2 %."""

from django.db import migrations

OPTIONS = "autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02"


def set_options(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("syncs", "Delivery")._meta.db_table)
        schema_editor.execute(f"ALTER TABLE {table} SET ({OPTIONS})")


def reset_options(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("syncs", "Delivery")._meta.db_table)
        schema_editor.execute(f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor)")


class Migration(migrations.Migration):
    dependencies = [("syncs", "0011_retention")]

    operations = [migrations.RunPython(set_options, reset_options)]
