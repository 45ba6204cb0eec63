# Holdouts and lift: a sync's share and salt (in its history too), the global paid holdout and
# its history, the holdout's decision on each delivery, and the index the lift of a sync reads.
import django.db.models.deletion
import simple_history.models
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("syncs", "0009_paid_channel_fields"),
        ("audiences", "0008_holdouts"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="sync",
            name="holdout_share",
            field=models.FloatField(
                default=0.0,
                help_text="Share of the audience never sent, to measure lift against: 0.1 holds out 10 %. Applies to people entering from the change on.",
            ),
        ),
        migrations.AddField(
            model_name="sync",
            name="holdout_salt",
            field=models.CharField(
                blank=True,
                default="",
                help_text="Mixed with the customer id to choose who is held out; blank: the sync's key. A new salt chooses other people.",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="historicalsync",
            name="holdout_share",
            field=models.FloatField(
                default=0.0,
                help_text="Share of the audience never sent, to measure lift against: 0.1 holds out 10 %. Applies to people entering from the change on.",
            ),
        ),
        migrations.AddField(
            model_name="historicalsync",
            name="holdout_salt",
            field=models.CharField(
                blank=True,
                default="",
                help_text="Mixed with the customer id to choose who is held out; blank: the sync's key. A new salt chooses other people.",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="delivery",
            name="held_out",
            field=models.BooleanField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("action", "enter"), ("held_out__isnull", False), ("initial", False)),
                fields=["sync", "person", "changed_at", "held_out"],
                name="delivery_holdout_entries",
            ),
        ),
        migrations.CreateModel(
            name="GlobalHoldout",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key", models.SlugField(default="global", editable=False, max_length=64, unique=True)),
                (
                    "share",
                    models.FloatField(
                        default=0.0,
                        help_text="Share of every paid audience never sent to any ad platform: 0.05 holds out 5 %. Applies to people entering from the change on.",
                    ),
                ),
                (
                    "salt",
                    models.CharField(
                        blank=True,
                        default="",
                        help_text="Mixed with the customer id to choose who is held out; blank: 'global'. A new salt chooses other people.",
                        max_length=64,
                    ),
                ),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"verbose_name": "global paid holdout"},
        ),
        migrations.CreateModel(
            name="HistoricalGlobalHoldout",
            fields=[
                ("id", models.BigIntegerField(auto_created=True, blank=True, db_index=True, verbose_name="ID")),
                ("key", models.SlugField(default="global", editable=False, max_length=64)),
                (
                    "share",
                    models.FloatField(
                        default=0.0,
                        help_text="Share of every paid audience never sent to any ad platform: 0.05 holds out 5 %. Applies to people entering from the change on.",
                    ),
                ),
                (
                    "salt",
                    models.CharField(
                        blank=True,
                        default="",
                        help_text="Mixed with the customer id to choose who is held out; blank: 'global'. A new salt chooses other people.",
                        max_length=64,
                    ),
                ),
                ("updated_at", models.DateTimeField(blank=True, editable=False)),
                ("history_id", models.AutoField(primary_key=True, serialize=False)),
                ("history_date", models.DateTimeField(db_index=True)),
                ("history_change_reason", models.CharField(max_length=100, null=True)),
                ("history_type", models.CharField(choices=[("+", "Created"), ("~", "Changed"), ("-", "Deleted")], max_length=1)),
                (
                    "history_user",
                    models.ForeignKey(
                        null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
            ],
            options={
                "verbose_name": "historical global paid holdout",
                "verbose_name_plural": "historical global paid holdouts",
                "ordering": ("-history_date", "-history_id"),
                "get_latest_by": ("history_date", "history_id"),
            },
            bases=(simple_history.models.HistoricalChanges, models.Model),
        ),
    ]
