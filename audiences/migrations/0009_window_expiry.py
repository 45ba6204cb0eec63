# Reserved for its feature's schema: filled in by hand when the feature needs it (several
# features are built at once, so each owns one migration in a fixed order).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audiences", "0008_holdouts")]

    operations = []
