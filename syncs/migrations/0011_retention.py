# Retention (README "Retention"): the daily rollups pruned rows leave behind, and each pass's
# record. Written by hand: several features are built at once, each owning one migration.
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("syncs", "0010_holdouts"), ("audiences", "0009_window_expiry")]

    operations = [
        migrations.CreateModel(
            name="RetentionRun",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("started_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("event_days", models.PositiveIntegerField(help_text="Events older than this many days were due to go.")),
                (
                    "deleted",
                    models.JSONField(
                        default=dict, help_text="Rows deleted per kind: events, deliveries, batches, runs, task results."
                    ),
                ),
                (
                    "complete",
                    models.BooleanField(default=False, help_text="Everything due went; false: the time budget ran out first."),
                ),
            ],
            options={"ordering": ["-started_at"]},
        ),
        migrations.CreateModel(
            name="SyncDay",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day", models.DateField()),
                ("sent", models.PositiveIntegerField(default=0)),
                ("rejected", models.PositiveIntegerField(default=0)),
                ("dead", models.PositiveIntegerField(default=0)),
                ("cancelled", models.PositiveIntegerField(default=0)),
                ("skipped", models.PositiveIntegerField(default=0)),
                ("dry_run", models.PositiveIntegerField(default=0)),
                ("lag_enter", models.JSONField(default=dict)),
                ("lag_exit", models.JSONField(default=dict)),
                ("runs", models.PositiveIntegerField(default=0)),
                ("runs_succeeded", models.PositiveIntegerField(default=0)),
                ("runs_partial", models.PositiveIntegerField(default=0)),
                ("runs_failed", models.PositiveIntegerField(default=0)),
                ("run_planned", models.PositiveBigIntegerField(default=0)),
                ("run_sent", models.PositiveBigIntegerField(default=0)),
                ("run_rejected", models.PositiveBigIntegerField(default=0)),
                ("run_skipped", models.PositiveBigIntegerField(default=0)),
                ("run_retried", models.PositiveBigIntegerField(default=0)),
                ("run_requests", models.PositiveBigIntegerField(default=0)),
                ("batches", models.PositiveIntegerField(default=0)),
                ("batches_failed", models.PositiveIntegerField(default=0)),
                ("sync", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="syncs.sync")),
            ],
            options={
                "ordering": ["sync", "day"],
                "constraints": [models.UniqueConstraint(fields=("sync", "day"), name="syncday_one_per_day")],
            },
        ),
    ]
