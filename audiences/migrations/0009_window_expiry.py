# Window expiry: when each realtime audience's answer for a person next changes with no new
# event, and what a full evaluation needs to tell a consistency check from a first evaluation.
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audiences", "0008_holdouts")]

    operations = [
        migrations.AddField(
            model_name="audience",
            name="evaluated_definition",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="audience",
            name="consistency_differences",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="audience",
            name="consistency_checked_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.CreateModel(
            name="WindowExpiry",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("due_at", models.DateTimeField()),
                (
                    "audience",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="audiences.audience",
                    ),
                ),
                (
                    "person",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="audiences.person"),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["due_at"], name="windowexpiry_due")],
                "constraints": [models.UniqueConstraint(fields=("audience", "person"), name="windowexpiry_audience_person")],
            },
        ),
    ]
