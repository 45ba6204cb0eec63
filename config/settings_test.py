"""Test settings: the real settings, made deterministic and fast.

`make test` runs with no services at all (SQLite file under var/, ORM broker);
`make test-postgres` sets DATABASE_URL and REDIS_URL before importing these.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("DOWNSTREAM_ENCRYPTION_KEY", "GUTmjgfsx7nEwG3Rg2c5D6yyYeRc7Z2ZyAOgL8cP_7s=")
# Runs side by side (a developer's and CI's) get their own test database and broker queue,
# worker processes started by tests inherit these through the environment.
RUN_ID = os.environ.setdefault("DOWNSTREAM_TEST_RUN", str(os.getpid()))
os.environ.setdefault("Q_NAME", f"downstream-test-{RUN_ID}")
# and their own keys in a shared Redis (an expiry waiter's lease, for one)
os.environ.setdefault("CACHE_KEY_PREFIX", f"downstream-test-{RUN_ID}")
# The contract servers tests send to listen on 127.0.0.1 (over http): let destinations reach them.
os.environ.setdefault("DESTINATION_PRIVATE_HOSTS", "127.0.0.1,localhost")
# Tests give file destinations folders under pytest's tmp_path: the temporary folder is their root.
os.environ.setdefault("EXPORT_ROOT", tempfile.gettempdir())

from config.settings import *  # noqa: E402,F403
from config.settings import DATABASES, Q_CLUSTER, VAR_DIR  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so that a real qcluster or gunicorn process started by a test can
    # open the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{RUN_ID}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_downstream_{RUN_ID}"}

# Tests that are about a task's logic run it in-process; tests about the worker start a real
# qcluster with config.settings and the test database's URL.
Q_CLUSTER = {**Q_CLUSTER, "sync": True}
# A test about what goes out sends it at once; the linger has a test of its own.
DELIVERY_ADDS_LINGER_S = 0.0
DELIVERY_IDLE_S = 0.0

# Live-server threads open their own connections; closing them per request lets the test
# database be dropped at the end of the run.
DATABASES["default"]["CONN_MAX_AGE"] = 0
