# Holdouts and lift: the membership records whether an entry was held out of every sync; an
# index serves the lift's scan of an audience's entries person by person (covering the flag),
# and a tiny one finds the internal test accounts the lift leaves out.
from django.db import migrations, models


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
                condition=models.Q(("held_out__isnull", False)), fields=["audience", "person", "entered_at", "held_out"],
                name="membership_holdout_entries",
            ),
        ),
        migrations.AddIndex(
            model_name="person",
            index=models.Index(condition=models.Q(("is_test", True)), fields=["id"], name="person_test_accounts"),
        ),
    ]
