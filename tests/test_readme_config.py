"""The README's config-as-code example of the three ad platforms is applied as written, and
exported again unchanged: what a reader copies works."""

import re
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

from audiences.services import audience_save
from syncs.models import Destination, Sync

pytestmark = pytest.mark.django_db

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    after = text.split("The three in config as code", 1)[1]
    return re.search(r"```yaml\n(.*?)```", after, re.DOTALL).group(1)


def test_the_readme_s_ad_platform_example_applies_and_exports_again_unchanged(tmp_path, monkeypatch):
    for name in ("META_ACCESS_TOKEN", "GOOGLE_DATAMANAGER_ACCESS_TOKEN", "TIKTOK_ACCESS_TOKEN"):
        monkeypatch.setenv(name, f"{name.lower()}-value")
    for key in ("cart_0_2h", "lapsed_60_90d", "recent_purchasers_24h"):
        audience_save(data={"key": key, "name": key, "rule": {"attribute": "flag", "eq": True}})
    path = tmp_path / "platforms.yaml"
    path.write_text(readme_example())
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())

    assert sorted(Destination.objects.values_list("kind", flat=True)) == ["google", "meta", "tiktok"]
    assert Destination.objects.get(key="meta-ads").credentials == {"access_token": "meta_access_token-value"}
    seed = Sync.objects.get(key="buyers-seed-to-tiktok")
    assert (seed.additive_only, seed.match_on) == (True, ["PHONE_SHA256"])
    assert Sync.objects.get(key="carts-to-meta").match_on == ["EMAIL", "PHONE", "FN", "LN", "COUNTRY", "EXTERN_ID"]

    out = StringIO()
    call_command("export_config", stdout=out)
    again = tmp_path / "again.yaml"
    again.write_text(out.getvalue())
    plan = StringIO()
    call_command("apply_config", str(again), "--check", stdout=plan, stderr=StringIO())
    exported = yaml.safe_load(out.getvalue())
    assert {d["key"] for d in exported["destinations"]} == {"meta-ads", "google-ads", "tiktok"}
    for key in ("meta-ads", "google-ads", "tiktok", "carts-to-meta", "lapsed-google", "buyers-seed-to-tiktok"):
        assert key not in plan.getvalue()  # nothing to change
