# Holdouts and lift: the membership records whether an entry was held out of every sync; an
# index serves the lift's scan of an audience's entries person by person (covering the flag),
# a tiny one finds the internal test accounts the lift leaves out, and one holds the default
# conversion event's rows (with their properties on PostgreSQL, so the lift reads revenue from
# the index instead of one random heap page per purchase).
from django.db import migrations, models

CONVERSION_EVENT = "Order Completed"  # syncs.lift.DEFAULT_EVENT


def add_conversion_index(apps, schema_editor):
    """Not a model index: its INCLUDE is PostgreSQL's only (SQLite gets the index without it),
    which Django's model state cannot say without a system-check warning on SQLite."""
    quote = schema_editor.quote_name
    table = quote(apps.get_model("audiences", "Event")._meta.db_table)
    include = f" INCLUDE ({quote('properties')})" if schema_editor.connection.vendor == "postgresql" else ""
    # a literal: neither database takes a parameter in an index's WHERE
    name = "'" + CONVERSION_EVENT.replace("'", "''") + "'"
    schema_editor.execute(
        f"CREATE INDEX {quote('event_conversions')} ON {table} ({quote('person_id')}, {quote('occurred_at')}){include} "
        f"WHERE {quote('name')} = {name}"
    )


def drop_conversion_index(apps, schema_editor):
    schema_editor.execute(f"DROP INDEX {schema_editor.quote_name('event_conversions')}")


class Migration(migrations.Migration):
    dependencies = [("audiences", "0007_audience_evaluation_failing")]

    operations = [
        migrations.AddField(
            model_name="membership",
            name="held_out",
            field=models.BooleanField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="membership",
            index=models.Index(
                condition=models.Q(("held_out__isnull", False)),
                fields=["audience", "person", "entered_at", "held_out"],
                name="membership_holdout_entries",
            ),
        ),
        migrations.AddIndex(
            model_name="person",
            index=models.Index(condition=models.Q(("is_test", True)), fields=["id"], name="person_test_accounts"),
        ),
        migrations.RunPython(add_conversion_index, drop_conversion_index),
    ]
