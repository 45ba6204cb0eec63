"""Downstream settings: everything that differs between machines comes from the environment.

`.env.example` documents every variable. The embedded default (no variables set at all) is
SQLite under `var/` with the django-q2 ORM broker on the same file, which is what `make run`
and `make test` use; `DATABASE_URL` and `REDIS_URL` move to PostgreSQL and Redis.
"""

import re
from datetime import timedelta
from pathlib import Path

import environ
import phonenumbers
from csp.constants import NONE, SELF, UNSAFE_HASHES
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Local state of the embedded default: the SQLite file, the demo login.
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))
(VAR_DIR / "staticfiles").mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Copy .env.example to .env and fill it in "
            "(`make run` does this for you), or set DEBUG=1 for a throwaway key."
        )
    SECRET_KEY = "insecure-debug-only-key-do-not-use-in-production"

# Fernet key (urlsafe base64 of 32 bytes) used to encrypt destination credentials at rest.
ENCRYPTION_KEY = env.str("DOWNSTREAM_ENCRYPTION_KEY", default="")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
BASE_URL = env.str("BASE_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "config.apps.DownstreamAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_q",
    "simple_history",
    "axes",
    "csp",
    "audiences",
    "syncs",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "config.middleware.DashboardAccessMiddleware",
    "config.middleware.NulCharacterMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # last, as django-axes asks: it turns a lockout into the lockout page
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'downstream.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web server read while the worker writes; IMMEDIATE takes the write lock
        # at BEGIN so two writers queue on busy_timeout instead of failing with
        # "database is locked" half-way through a transaction.
        "init_command": ("PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA busy_timeout=20000;PRAGMA cache_size=-64000"),
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache and worker -----------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# Installations (or test runs) that share one Redis database keep their keys apart by a prefix.
CACHE_KEY_PREFIX = env.str("CACHE_KEY_PREFIX", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
        }
    }
else:
    # A database cache so that the worker's cluster stats (written by the qcluster process)
    # are visible to the web process on the embedded default.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "downstream_cache",
        }
    }

Q_CLUSTER = {
    # the broker's queue name; a test run uses its own, so runs side by side never share tasks
    "name": env.str("Q_NAME", default="downstream"),
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT", default=300),
    # retry must stay well above timeout, otherwise a slow task is handed to a second worker
    # while the first one is still running it.
    "retry": env.int("Q_RETRY", default=900),
    "catch_up": False,
    "max_attempts": 1,
    # successes kept per task function (failures are always saved; retention prunes both
    # after RETENTION_TASK_DAYS): the hourly retention pass's results are not pushed out by
    # the per-minute ticks
    "save_limit": env.int("Q_SAVE_LIMIT", default=250),
    "save_limit_per": "func",
    "poll": 0.1,
    "guard_cycle": 0.5,
    "ack_failures": True,
    "label": "Worker",
}
if Q_CLUSTER["retry"] <= Q_CLUSTER["timeout"]:
    raise ImproperlyConfigured("Q_RETRY must be larger than Q_TIMEOUT.")
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
# Additions to activation audiences wait up to this long for company before they go, so that
# churn makes a few full requests instead of many small ones (removals never wait).
DELIVERY_ADDS_LINGER_S = env.float("DELIVERY_ADDS_LINGER_S", default=1.0)
# A sender with nothing to send stays this long, looking for new rows, before it lets its worker go.
DELIVERY_IDLE_S = env.float("DELIVERY_IDLE_S", default=5.0)
# The read-back (syncs/readback.py): every READBACK_EVERY_MINUTES each ad platform is asked what
# it counts of each sync's audience. Under READBACK_MIN_MATCH_RATE of Downstream's people
# matched opens "Low match rate"; a count more than READBACK_DRIFT_SHARE away from what
# Downstream expects opens "Downstream count drifted" (platforms count approximately: keep it
# wide). Neither is judged before a sync is READBACK_SETTLE_HOURS old (matching takes hours).
READBACK_EVERY_MINUTES = env.int("READBACK_EVERY_MINUTES", default=15)
READBACK_MIN_MATCH_RATE = env.float("READBACK_MIN_MATCH_RATE", default=0.3)
READBACK_DRIFT_SHARE = env.float("READBACK_DRIFT_SHARE", default=0.2)
READBACK_SETTLE_HOURS = env.float("READBACK_SETTLE_HOURS", default=24.0)
# A Meta sync's full replace (usersreplace) runs when its last one is this many days old; 0: only
# on demand (`manage.py meta_reconcile SYNC_KEY`).
META_RECONCILE_EVERY_DAYS = env.int("META_RECONCILE_EVERY_DAYS", default=7)

# --- retention (README "Retention") ---------------------------------------------------------
# Events go when older than the longest window any audience's rule names plus the margin, never
# before the floor; settled deliveries, request batches and sync runs after their days (their
# daily counts stay for the pages); worker task results after theirs. Deleted in chunks of
# RETENTION_CHUNK_ROWS rows with a pause after each. Checked by `manage.py check` (syncs.E101).
RETENTION_EVENT_MARGIN_DAYS = env.int("RETENTION_EVENT_MARGIN_DAYS", default=7)
RETENTION_EVENT_FLOOR_DAYS = env.int("RETENTION_EVENT_FLOOR_DAYS", default=30)
RETENTION_DELIVERY_DAYS = env.int("RETENTION_DELIVERY_DAYS", default=30)
RETENTION_BATCH_DAYS = env.int("RETENTION_BATCH_DAYS", default=30)
RETENTION_RUN_DAYS = env.int("RETENTION_RUN_DAYS", default=90)
RETENTION_TASK_DAYS = env.int("RETENTION_TASK_DAYS", default=30)
RETENTION_CHUNK_ROWS = env.int("RETENTION_CHUNK_ROWS", default=5000)
RETENTION_PAUSE_S = env.float("RETENTION_PAUSE_S", default=0.2)

# --- auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one user name
# from one address, that pair is refused (even with the right password) for
# LOGIN_COOLOFF_MINUTES; a superuser unlocks it sooner under Access attempts in the admin.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "config.login.locked_out"
AXES_CLIENT_IP_CALLABLE = "config.login.client_address"
# Behind PROXY_COUNT reverse proxies (each appending to X-Forwarded-For) the client's address
# is the one the outermost proxy saw; with 0 it is the connection's, which nobody can forge.
PROXY_COUNT = env.int("PROXY_COUNT", default=0)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- behind HTTPS (README "Production"): all off by default, for `make run` on plain http ----
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Opt in only behind a proxy that sets this header itself (and drops a client's): e.g.
# SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https. Otherwise a client could claim https.
_proxy_header = env.str("SECURE_PROXY_SSL_HEADER", default="")
SECURE_PROXY_SSL_HEADER = None
if _proxy_header:
    _parts = [part.strip() for part in _proxy_header.split(",")]
    if len(_parts) != 2 or not _parts[0].startswith("HTTP_") or not _parts[1]:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={_proxy_header!r} is not a header and its value, such as HTTP_X_FORWARDED_PROTO,https."
        )
    SECURE_PROXY_SSL_HEADER = (_parts[0], _parts[1])

# Content-Security-Policy (django-csp): scripts, styles and everything else from this site only,
# nothing inline (the dashboard's scripts are files under static/, its charts inline SVG).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        # the one inline style attribute the admin shows: django-simple-history's paginator
        "style-src-attr": [UNSAFE_HASHES, "'sha256-XMXSevYjgSjXgRafBFDvtjwX+yyWLrxfso9DcNZ9UXM='"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- i18n and time --------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
# Region a phone number without a country code is read in when people are looked up by phone
# (identifier policies keep a region of their own for what they send).
PHONE_DEFAULT_REGION = env.str("PHONE_DEFAULT_REGION", default="US").upper()
if PHONE_DEFAULT_REGION not in phonenumbers.SUPPORTED_REGIONS:
    raise ImproperlyConfigured(f"PHONE_DEFAULT_REGION={PHONE_DEFAULT_REGION!r} is not a region code such as US, GB, DE.")
USE_I18N = False
USE_TZ = True

# --- static ---------------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"  # `collectstatic` target outside DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- where destinations may write and connect -----------------------------------------------
# File destinations write only under this folder, each in a folder of its own, and never under
# a folder the web server serves (STATIC_ROOT, STATICFILES_DIRS).
EXPORT_ROOT = Path(env.str("EXPORT_ROOT", default=str(VAR_DIR / "exports")))
# Hosts (names, addresses or CIDRs) that destinations and Customer.io workspaces may reach
# although they are loopback, private or link-local, and over plain http: e.g.
# 127.0.0.1,localhost for a receiver on this machine. Any other host: https only outside
# DEBUG, and only public addresses (checked when saved and again, resolved, when sending).
DESTINATION_PRIVATE_HOSTS = env.list("DESTINATION_PRIVATE_HOSTS", default=[])

# --- mail and alerts ------------------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="downstream@localhost")
ALERT_EMAILS = env.list("ALERT_EMAILS", default=[])
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")

# --- ingest limits (Segment's published limits) ---------------------------------------------
INGEST_MAX_BODY_BYTES = 500 * 1024
INGEST_MAX_MESSAGE_BYTES = 32 * 1024

# --- audience evaluation --------------------------------------------------------------------
# Realtime audiences let people leave when a window ends by window expiry (audiences/expiry.py);
# a full evaluation this often checks that none was missed (what it corrects is alerted as a bug).
REALTIME_CHECK_EVERY = env.str("REALTIME_CHECK_EVERY", default="1h")
if not re.fullmatch(r"[1-9][0-9]{0,5}[mhdw]", REALTIME_CHECK_EVERY):
    raise ImproperlyConfigured(f"REALTIME_CHECK_EVERY={REALTIME_CHECK_EVERY!r} is not a duration such as 30m, 1h, 1d.")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # a refused request (4xx) is one line; a server error keeps its traceback
    "filters": {"client_errors_on_one_line": {"()": "config.log_filters.ClientErrorsOnOneLine"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["client_errors_on_one_line"]},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # failed logins and lockouts (warnings) are kept; every successful login is not news
        "axes": {"level": "WARNING"},
    },
}
