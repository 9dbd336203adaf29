"""Settings for the WeCom AI platform, all read from the environment (django-environ).

`DJANGO_ENV` is `development` (default), `test` or `production`. Production refuses to
start on missing secrets or insecure values; see `_production_problems`. Runtime
configuration that admins change (bots, models, policies) lives in the database.

Importing this module starts no process and writes no file. On a development machine the
embedded servers' URLs and the generated development secrets come from
`wecom_ai.embedded.environment`, which `python -m wecom_ai.embedded with CMD`, `manage.py`
and the runner (`make run`) put into the environment first.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import environ
from celery.schedules import crontab
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from wecom_ai import queues

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state (embedded servers, default model, media, development secrets); created by
# `wecom_ai.embedded`, not here.
DATA_DIR = Path(os.environ.get("WECOM_AI_DATA", BASE_DIR / "var")).expanduser().resolve()

env = environ.Env()

# pytest (8.2+) exports PYTEST_VERSION, also to the worker processes tests start.
DJANGO_ENV = env.str(
    "DJANGO_ENV", default="test" if "PYTEST_VERSION" in os.environ else "development"
)
if DJANGO_ENV not in {"development", "test", "production"}:
    raise ImproperlyConfigured(
        f"DJANGO_ENV must be development, test or production, not {DJANGO_ENV!r}"
    )
PRODUCTION = DJANGO_ENV == "production"


def _secret(name: str, default: str | None = None) -> str | None:
    """Read a secret from NAME or from the file named by NAME_FILE (Docker/K8s secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_name!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def _required(name: str, *, secret: bool = False) -> str:
    """A variable development and tests get from the embedded wrapper; production from you.

    A missing secret in production is left empty here: `_production_problems` reports all
    of them together.
    """
    value = _secret(name) if secret else os.environ.get(name, "")
    if value or (secret and PRODUCTION):
        return value or ""
    raise ImproperlyConfigured(
        f"{name} is not set: run via `python -m wecom_ai.embedded with …` (`manage.py` and "
        f"`make run` do it themselves), which starts the embedded PostgreSQL and Redis and "
        f"generates development secrets, or set {name}"
    )


SECRET_KEY = _required("SECRET_KEY", secret=True)

# Keys for secrets stored in the database (bot tokens, AES keys, archive secrets), newest
# first. Add a new key at the front to rotate; `manage.py secrets_rotate` re-encrypts.
_field_keys = _required("FIELD_ENCRYPTION_KEYS", secret=True)
FIELD_ENCRYPTION_KEYS = [key.strip() for key in (_field_keys or "").split(",") if key.strip()]

DEBUG = env.bool("DEBUG", default=DJANGO_ENV == "development")
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# The public base URL WeCom reaches; used to show each bot's callback URL.
PUBLIC_BASE_URL = env.str(
    "PUBLIC_BASE_URL", default=f"http://127.0.0.1:{env.int('PORT', default=8000)}"
).rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "guardian",
    "apps.core",
    "apps.inference",
    "apps.directory",
    "apps.bots",
    "apps.knowledge",
    "apps.audit",
    "apps.monitoring",
    "apps.wecomapp",
    "apps.wechat",
    "apps.openai_api",
    "drf_spectacular",
    "drf_spectacular_sidecar",
]

MIDDLEWARE = [
    "apps.monitoring.middleware.RequestMetricsMiddleware",
    "wecom_ai.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "wecom_ai.static_files.AsyncWhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "wecom_ai.urls"
WSGI_APPLICATION = "wecom_ai.wsgi.application"
ASGI_APPLICATION = "wecom_ai.asgi.application"

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
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# --- data stores --------------------------------------------------------------------------
# The app (web, workers, beat) connects as a least-privilege role: not a superuser, not the
# owner of the tables, only INSERT/SELECT on the ledger. Migrations run as the owner role,
# with DATABASE_URL pointing at it (`make run` and compose do that), and grant the app role
# its privileges (`DATABASE_APP_ROLE`, see apps/audit/db_roles.py). The embedded server has
# both roles; the test run creates its database as the owner, then connects as the app role
# (tests/conftest.py).
DATABASES = {"default": env.db_url_config(_required("DATABASE_URL"))}
# Set by the embedded wrapper: the app role's password is in the data directory (tests).
EMBEDDED_DATABASE = env.bool("WECOM_AI_EMBEDDED_DATABASE", default=False)
DATABASE_APP_ROLE = env.str("DATABASE_APP_ROLE", default="")
# A Unix-socket URL (`?host=/path`, what the embedded server gives) lands in OPTIONS.
if not DATABASES["default"].get("HOST") and "host" in DATABASES["default"].get("OPTIONS", {}):
    DATABASES["default"]["HOST"] = DATABASES["default"]["OPTIONS"].pop("host")
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str(
    "TEST_DATABASE_NAME", default="test_wecom_ai"
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = _required("REDIS_URL").rstrip("/")
if REDIS_URL.rsplit("/", 1)[-1].isdigit():
    REDIS_URL = REDIS_URL.rsplit("/", 1)[0]
# Redis must require a password (whoever can write to it steers every process that reads
# it): from the URL, or REDIS_PASSWORD / REDIS_PASSWORD_FILE (compose's Docker secret).
_redis_password = _secret("REDIS_PASSWORD")
if _redis_password:
    _redis_parts = urlsplit(REDIS_URL)
    if _redis_parts.password is None:
        _user = quote(_redis_parts.username or "", safe="")
        _host = _redis_parts.netloc.rsplit("@", 1)[-1]
        _netloc = f"{_user}:{quote(_redis_password, safe='')}@{_host}"
        REDIS_URL = urlunsplit(_redis_parts._replace(netloc=_netloc))
REDIS_HAS_PASSWORD = bool(urlsplit(REDIS_URL).password)
# Set by the embedded wrapper when REDIS_URL is its own server (tests check its set-up).
EMBEDDED_REDIS = env.bool("WECOM_AI_EMBEDDED_REDIS", default=False)
# Databases used inside the Redis server; the test run shifts them so it never touches
# the data of a `make run` on the same machine. Each pytest-xdist worker (`make test-fast`
# runs two; PYTEST_XDIST_WORKER=gwN) takes four of its own, since every test flushes them:
# gw0 8–11, gw1 16–19, gw2 20–23, … (12–15 are the benchmarks').
_xdist_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_DB_BASE = env.int(
    "REDIS_DB_BASE",
    default=(8 if _xdist_worker == 0 else 12 + 4 * _xdist_worker) if DJANGO_ENV == "test" else 0,
)


def _positive_int(name: str, default: int) -> int:
    value = env.int(name, default=default)
    if value < 1:
        raise ImproperlyConfigured(f"{name} must be at least 1")
    return value


# Under ASGI, Django runs sync code (admin pages) on a new thread per request, where a
# persistent connection is never reused; the web processes take connections from a pool
# instead (README, "Web tier"): DATABASE_POOL_SIZE per process, 0 = no pool (workers).
DATABASE_POOL_SIZE = env.int("DATABASE_POOL_SIZE", default=0)
if DATABASE_POOL_SIZE < 0:
    raise ImproperlyConfigured("DATABASE_POOL_SIZE must be 0 (no pool) or more")
if DATABASE_POOL_SIZE:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # a pooled connection goes back after use
    # Opened in full with the first connection: a burst of callbacks never waits for more.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": DATABASE_POOL_SIZE,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": 10,
    }


def _redis_db(offset: int) -> str:
    return f"{REDIS_URL}/{REDIS_DB_BASE + offset}"


CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": _redis_db(2),
        "KEY_PREFIX": "wecom_ai",
        # JSON, never pickle: a value planted in Redis must not run code when read back.
        "OPTIONS": {"serializer": "wecom_ai.cache_json.JSONSerializer"},
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [_redis_db(3)], "capacity": 1000, "expiry": 60},
    }
}

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=_redis_db(0))
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=_redis_db(1))
# JSON only, for tasks and results alike: nothing read back from Redis is unpickled.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_EVENT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Longer than any generation may run (WeCom's 6-minute window plus the response_url
# follow-up), so a slow answer is never handed to a second worker while still running.
# Priority steps: a re-queued turn (see `wecom_ai.queues`) is taken before fresh ones.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 1800,
    "priority_steps": queues.PRIORITY_STEPS,
}
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "turns-sweep": {"task": "apps.bots.tasks.turns_sweep", "schedule": 10.0},
    "archive-pull-due": {"task": "apps.audit.tasks.archive_pull_due", "schedule": 60.0},
    "ledger-checkpoint": {
        "task": "apps.audit.tasks.ledger_checkpoint",
        "schedule": crontab(hour=0, minute=5),
    },
    "retention-purge": {
        "task": "apps.audit.tasks.retention_purge",
        "schedule": crontab(hour=3, minute=30),
    },
    "alerts-evaluate": {"task": "apps.monitoring.tasks.alerts_evaluate", "schedule": 60.0},
    "dashboard-rollup": {"task": "apps.monitoring.tasks.dashboard_rollup", "schedule": 60.0},
}

# --- audit --------------------------------------------------------------------------------
# Keys the content fingerprints in the ledger; keep it stable (derived from SECRET_KEY if unset).
AUDIT_CONTENT_HASH_KEY = _secret("AUDIT_CONTENT_HASH_KEY")
# Anchors the ledger outside the database: every entry and checkpoint carries an HMAC under
# this key, and each daily checkpoint is also appended to AUDIT_LEDGER_ANCHOR_FILE (put it on
# WORM storage or ship it off the host). The app's database role cannot change either, so a
# chain rewritten with full database access no longer verifies. Required in production.
AUDIT_LEDGER_KEY = _required("AUDIT_LEDGER_KEY", secret=True)
AUDIT_LEDGER_ANCHOR_FILE = env.str(
    "AUDIT_LEDGER_ANCHOR_FILE", default=str(DATA_DIR / "ledger-anchors.jsonl")
)
AUDIT_ARCHIVE_GAP_WARNING_HOURS = env.int("AUDIT_ARCHIVE_GAP_WARNING_HOURS", default=96)
# The session-archive vendor library (libWeWorkFinanceSdk_C.so) the archive workers load:
# deployment configuration, never a form field. It must lie in one of the allowed
# directories, which (with the file) must belong to root and be writable by nobody else;
# ARCHIVE_SDK_SHA256 pins the exact build.
ARCHIVE_SDK_LIBRARY = env.str("ARCHIVE_SDK_LIBRARY", default="")
ARCHIVE_SDK_ALLOWED_DIRS = env.list("ARCHIVE_SDK_ALLOWED_DIRS", default=["/opt/wework"])
ARCHIVE_SDK_SHA256 = env.str("ARCHIVE_SDK_SHA256", default="")
# Owners trusted for the library and its directories (root); tests add their own uid.
ARCHIVE_SDK_TRUSTED_UIDS = [int(uid) for uid in env.list("ARCHIVE_SDK_TRUSTED_UIDS", default=["0"])]

# --- knowledge ----------------------------------------------------------------------------
KNOWLEDGE_MAX_UPLOAD_BYTES = _positive_int("KNOWLEDGE_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
# Passages embedded per llama.cpp call while indexing.
KNOWLEDGE_EMBEDDING_BATCH = _positive_int("KNOWLEDGE_EMBEDDING_BATCH", 16)
KNOWLEDGE_PROGRESS_INTERVAL_SECONDS = env.float("KNOWLEDGE_PROGRESS_INTERVAL_SECONDS", default=0.5)
# The embedding model of knowledge bases that name none; empty = DEFAULT_MODEL_PATH.
KNOWLEDGE_EMBEDDING_MODEL_PATH = env.str("KNOWLEDGE_EMBEDDING_MODEL_PATH", default="")
# Embeddings of recent texts kept per process (LRU), so repeated questions skip the model.
KNOWLEDGE_EMBEDDING_CACHE_SIZE = env.int("KNOWLEDGE_EMBEDDING_CACHE_SIZE", default=4096)
# Bounds on one document's indexing: passages, run time (soft; the hard limit is 60 s later)
# and the private memory of the ingest worker process (RLIMIT_DATA; 0 = no limit).
KNOWLEDGE_MAX_CHUNKS = _positive_int("KNOWLEDGE_MAX_CHUNKS", 20_000)
KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS = _positive_int("KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS", 1800)
KNOWLEDGE_INGEST_MEMORY_LIMIT_MB = env.int("KNOWLEDGE_INGEST_MEMORY_LIMIT_MB", default=4096)
if KNOWLEDGE_INGEST_MEMORY_LIMIT_MB < 0:
    raise ImproperlyConfigured("KNOWLEDGE_INGEST_MEMORY_LIMIT_MB must be 0 (no limit) or more")
# BLAS threads of the bundled sentence encoder (0 = OpenBLAS's default, one per core).
# Measured on 2 shared cores: 16 passages of ~200 tokens in 0.3 s with 1 thread, 3.5 s
# with 2 (OpenBLAS threads spin while they wait for a busy core).
KNOWLEDGE_EMBEDDING_THREADS = env.int("KNOWLEDGE_EMBEDDING_THREADS", default=1)
# How the dense and lexical candidate lists are fused: "rrf" = weighted reciprocal rank
# fusion, "score" = weighted min-max normalised scores. Defaults measured on the tune half
# of bench/data/retrieval with the bundled encoder (bench/retrieval.py --only quality):
# passage recall@5 0.975 / MRR 0.816 against 0.759 / 0.589 for equal-weight RRF, whose
# lexical votes pull cross-lingual questions down (0.94 -> 0.45); with the question's
# search words embedded (KNOWLEDGE_DENSE_QUERY_TERMS) lexical 0.3 edges out 0.1 on MRR.
KNOWLEDGE_FUSION = env.str("KNOWLEDGE_FUSION", default="score")
if KNOWLEDGE_FUSION not in {"rrf", "score"}:
    raise ImproperlyConfigured("KNOWLEDGE_FUSION must be rrf or score")
KNOWLEDGE_FUSION_DENSE_WEIGHT = env.float("KNOWLEDGE_FUSION_DENSE_WEIGHT", default=1.0)
KNOWLEDGE_FUSION_LEXICAL_WEIGHT = env.float("KNOWLEDGE_FUSION_LEXICAL_WEIGHT", default=0.3)
KNOWLEDGE_RRF_K = _positive_int("KNOWLEDGE_RRF_K", 60)
# Whether a passage's heading path is part of the text that is embedded (it always is
# part of the search words); measured: passage recall@5 0.937 with, 0.873 without.
KNOWLEDGE_EMBED_HEADINGS = env.bool("KNOWLEDGE_EMBED_HEADINGS", default=True)
# "Answer only from sources" enforced: a bot whose knowledge bases all answer only from
# sources replies with its fixed no-answer text, without calling the model, unless the best
# passage's relevance (cosine similarity + LEXICAL_WEIGHT x share of the question's search
# words in it; `retrieval.hits_relevance`) reaches THRESHOLD. Measured on the tune half of
# bench/data/retrieval (bench/retrieval.py --only quality, "relevance threshold" table;
# 79 answerable and 22 no-answer questions, most of them near-misses): 2 answerable refused,
# 7 no-answer refused on the tune half; 4/78 and 6/22 on the report half.
KNOWLEDGE_RELEVANCE_THRESHOLD = env.float("KNOWLEDGE_RELEVANCE_THRESHOLD", default=0.28)
KNOWLEDGE_RELEVANCE_LEXICAL_WEIGHT = env.float("KNOWLEDGE_RELEVANCE_LEXICAL_WEIGHT", default=0.3)
# Matching passages ranked by the lexical search at most (those with every search word
# first): ranking reads each row, and a common word matches most of a large corpus.
KNOWLEDGE_LEXICAL_RANK_LIMIT = _positive_int("KNOWLEDGE_LEXICAL_RANK_LIMIT", 300)
# Whether the vector search embeds the question's search words (function words dropped)
# rather than the question as asked; measured in bench/retrieval.py (tune half).
KNOWLEDGE_DENSE_QUERY_TERMS = env.bool("KNOWLEDGE_DENSE_QUERY_TERMS", default=True)
# Passages deleted (re-indexing, re-embedding, deleted documents) after which the passage
# table is vacuumed on the ingest worker: until then the HNSW graph keeps the dead rows and
# a filtered vector search can exhaust hnsw.max_scan_tuples among them (0 = never).
KNOWLEDGE_VACUUM_AFTER_DELETED = env.int("KNOWLEDGE_VACUUM_AFTER_DELETED", default=5000)
# Language balance of the vector search (`retrieval.language_balanced`): each passage's
# similarity minus BALANCE x the mean of the best BALANCE_TOP in its language (Chinese or
# not), so that a bilingual corpus's other-language answers are not buried under the
# question's language; 0 = off. Measured on the tune half of bench/data/retrieval.
KNOWLEDGE_LANGUAGE_BALANCE = env.float("KNOWLEDGE_LANGUAGE_BALANCE", default=0.75)
KNOWLEDGE_LANGUAGE_BALANCE_TOP = _positive_int("KNOWLEDGE_LANGUAGE_BALANCE_TOP", 10)
# Neighbouring passages shown to the model around each hit (same document, adjacent
# position): at most NEIGHBOUR_TOKENS tokens per hit (0 = none), and with SAME_HEADING only
# those under the hit's own heading. Measured on the tune half of bench/data/retrieval
# (bench/retrieval.py --only quality, "+nb" rows).
KNOWLEDGE_NEIGHBOUR_TOKENS = env.int("KNOWLEDGE_NEIGHBOUR_TOKENS", default=200)
KNOWLEDGE_NEIGHBOUR_SAME_HEADING = env.bool("KNOWLEDGE_NEIGHBOUR_SAME_HEADING", default=False)

# --- WeChat Official Account and mini program (README "WeChat Official Account and mini
# program") ----------------------------------------------------------------------------------
WECHAT_API_BASE = env.str("WECHAT_API_BASE", default="https://api.weixin.qq.com").rstrip("/")
# WeChat waits 5 s for a passive reply; the callback waits this long for the answer, then
# answers empty and the customer-service API delivers it.
WECHAT_PASSIVE_REPLY_SECONDS = env.float("WECHAT_PASSIVE_REPLY_SECONDS", default=4.5)
# Mini-program sign-in: lifetimes of the access and refresh JWTs.
WECHAT_MP_ACCESS_TOKEN_MINUTES = env.int("WECHAT_MP_ACCESS_TOKEN_MINUTES", default=30)
WECHAT_MP_REFRESH_TOKEN_DAYS = env.int("WECHAT_MP_REFRESH_TOKEN_DAYS", default=7)

# --- WeCom ---------------------------------------------------------------------------------
WECOM_API_BASE = env.str("WECOM_API_BASE", default="https://qyapi.weixin.qq.com").rstrip("/")
WECOM_CALLBACK_MAX_BYTES = env.int("WECOM_CALLBACK_MAX_BYTES", default=64 * 1024)
# WeCom stops polling a stream 6 minutes after the user's message; finish before that and
# send the rest through response_url.
WECOM_STREAM_DEADLINE_SECONDS = env.float("WECOM_STREAM_DEADLINE_SECONDS", default=330.0)
WECOM_STREAM_FLUSH_SECONDS = env.float("WECOM_STREAM_FLUSH_SECONDS", default=0.15)
WECOM_STREAM_TTL_SECONDS = env.int("WECOM_STREAM_TTL_SECONDS", default=2 * 3600)
WECOM_REPLY_LANGUAGE = env.str("WECOM_REPLY_LANGUAGE", default="zh-hans")
# Long connection (README "Long connection"): where the connector dials, how long a
# connector's lease on a bot lasts without renewal (a dead holder's bots are taken over
# after this), how often it looks for added/changed bots, and how often an answer's Redis
# stream state is forwarded as a frame (the per-conversation rate limit still applies).
WECOM_LONGCONN_URL = env.str("WECOM_LONGCONN_URL", default="wss://openws.work.weixin.qq.com")
WECOM_LONGCONN_LEASE_SECONDS = env.float("WECOM_LONGCONN_LEASE_SECONDS", default=10.0)
WECOM_LONGCONN_POLL_SECONDS = env.float("WECOM_LONGCONN_POLL_SECONDS", default=2.0)
WECOM_LONGCONN_FORWARD_SECONDS = env.float("WECOM_LONGCONN_FORWARD_SECONDS", default=0.3)
WECOM_LONGCONN_MAX_AUTH_FAILURES = env.int("WECOM_LONGCONN_MAX_AUTH_FAILURES", default=5)
WECOM_LONGCONN_BACKOFF_SECONDS = env.float("WECOM_LONGCONN_BACKOFF_SECONDS", default=1.0)
# Files employees send in a 1:1 chat (both modes): download cap, text kept, and how much of
# it goes before each later question.
WECOM_FILE_MAX_BYTES = env.int("WECOM_FILE_MAX_BYTES", default=10 * 1024 * 1024)
WECOM_FILE_MAX_CHARS = env.int("WECOM_FILE_MAX_CHARS", default=200_000)
WECOM_FILE_CONTEXT_CHARS = env.int("WECOM_FILE_CONTEXT_CHARS", default=2000)
# A generating turn whose worker stopped sending heartbeats for this long is taken over.
TURN_LEASE_SECONDS = env.float("TURN_LEASE_SECONDS", default=15.0)
TURN_MAX_ATTEMPTS = env.int("TURN_MAX_ATTEMPTS", default=3)
# A queued turn not started for this long may have lost its message with a killed worker
# (reserved, unacknowledged): the sweeper sends it again, at most once per this interval.
TURN_REQUEUE_SECONDS = env.float("TURN_REQUEUE_SECONDS", default=45.0)
# After this long a turn stops generating; its answer goes to response_url (valid 1 hour).
TURN_GENERATION_TIMEOUT_SECONDS = env.float("TURN_GENERATION_TIMEOUT_SECONDS", default=900.0)

DEFAULT_MODEL_PATH = env.str(
    "DEFAULT_MODEL_PATH", default=str(DATA_DIR / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)
# Shown on the admin's status page; set by the image build (e.g. the git tag).
APP_VERSION = env.str("WECOM_AI_VERSION", default="development")
# The folder whose .gguf files the model profile form offers to choose from.
MODELS_DIR = env.str("WECOM_AI_MODELS_DIR", default=str(DATA_DIR / "models"))

# --- auth, REST -----------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# The OpenAPI 3 schema of the whole REST surface (/api/schema/) and its documentation page
# (/api/docs/), served from the sidecar's bundled Swagger UI: no CDN. Signed-in users only.
SPECTACULAR_SETTINGS = {
    "TITLE": "WeCom AI API",
    "DESCRIPTION": "Knowledge search, the mini-program API and the OpenAI-compatible API.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
ANONYMOUS_USER_NAME = None
# Mini-program sign-in (apps.wechat.auth): JWTs whose subject is the WeChat user, never a
# Django user; the admin keeps its sessions.
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=WECHAT_MP_ACCESS_TOKEN_MINUTES),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=WECHAT_MP_REFRESH_TOKEN_DAYS),
    "AUDIENCE": "wecom-ai:miniprogram",
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
}

# --- i18n -------------------------------------------------------------------------------------
LANGUAGE_CODE = env.str("LANGUAGE_CODE", default="zh-hans")
LANGUAGES = [("zh-hans", _("Simplified Chinese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("TIME_ZONE", default="Asia/Shanghai")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.str("STATIC_ROOT", default=str(DATA_DIR / "static"))
MEDIA_ROOT = env.str("MEDIA_ROOT", default=str(DATA_DIR / "media"))
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

# --- security -----------------------------------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=PRODUCTION)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# WeCom posts callbacks over HTTP(S) without redirects; the TLS terminator forwards them.
SECURE_REDIRECT_EXEMPT = [r"^wecom/", r"^healthz$", r"^readyz$"]


def _production_problems() -> list[str]:
    problems = []
    if DEBUG:
        problems.append("DEBUG must be off")
    if not SECRET_KEY or len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure"):
        problems.append("SECRET_KEY (or SECRET_KEY_FILE) must be set to 50+ random characters")
    if not FIELD_ENCRYPTION_KEYS:
        problems.append("FIELD_ENCRYPTION_KEYS (or FIELD_ENCRYPTION_KEYS_FILE) must be set")
    if not AUDIT_LEDGER_KEY or len(AUDIT_LEDGER_KEY) < 32:
        problems.append("AUDIT_LEDGER_KEY (or AUDIT_LEDGER_KEY_FILE) must be set to 32+ characters")
    if not REDIS_HAS_PASSWORD:
        problems.append("Redis must require a password (REDIS_URL or REDIS_PASSWORD[_FILE])")
    if not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS:
        problems.append("ALLOWED_HOSTS must list the real host names (no '*')")
    insecure = [
        name
        for name in (
            "SESSION_COOKIE_SECURE",
            "CSRF_COOKIE_SECURE",
            "SECURE_SSL_REDIRECT",
            "SECURE_HSTS_INCLUDE_SUBDOMAINS",
            "SECURE_HSTS_PRELOAD",
        )
        if not globals()[name]
    ]
    if insecure:
        problems.append(f"these must stay on in production: {', '.join(insecure)}")
    if SECURE_HSTS_SECONDS < 31536000:
        problems.append("SECURE_HSTS_SECONDS must be at least one year")
    if not PUBLIC_BASE_URL.startswith("https://"):
        problems.append("PUBLIC_BASE_URL must be an https:// URL")
    return problems


if PRODUCTION and (_problems := _production_problems()):
    raise ImproperlyConfigured("Refusing to start in production: " + "; ".join(_problems))

for _key in FIELD_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except ValueError as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS must be comma-separated Fernet keys "
            "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())')"
        ) from exc

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "wecom_ai.request_id.RequestIdFilter"}},
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "httpx": {"level": "WARNING"},
    },
}

# --- trust boundary: callback and response_url (issue 9) ----------------------------------------
# Every request body is capped before Django reads it (wecom_ai/body_limit.py): WeCom
# callbacks at WECOM_CALLBACK_MAX_BYTES, everything else (document uploads included) here.
# The reverse proxy should refuse the same sizes (README, "Proxy body limit").
REQUEST_BODY_MAX_BYTES = _positive_int(
    "REQUEST_BODY_MAX_BYTES", KNOWLEDGE_MAX_UPLOAD_BYTES + 1024 * 1024
)
# Hosts a message's response_url may name; the worker POSTs only there, over https, to a
# public address, without following redirects. Production: WeCom's API host only.
# Development and tests also accept http to 127.0.0.1 (the simulator's response_url server).
WECOM_RESPONSE_URL_HOSTS = env.list(
    "WECOM_RESPONSE_URL_HOSTS",
    default=["qyapi.weixin.qq.com"] if PRODUCTION else ["qyapi.weixin.qq.com", "127.0.0.1"],
)
WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK = env.bool(
    "WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK", default=not PRODUCTION
)
if PRODUCTION and WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK:
    raise ImproperlyConfigured(
        "Refusing to start in production: WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK must be off"
    )
# A callback whose timestamp is further than this from now is refused (replays).
WECOM_CALLBACK_MAX_SKEW_SECONDS = _positive_int("WECOM_CALLBACK_MAX_SKEW_SECONDS", 300)

# --- trust boundary: login and API throttling (issue 9) -----------------------------------------
# Proxies in front of the web process that append to X-Forwarded-For (0 = trust none, use
# the socket's address). Set it to the number of your own proxies, never more.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
# django-axes: after AXES_FAILURE_LIMIT failed logins for one account (from anywhere) or
# from one address (for any account), further logins are refused for the cool-off time;
# attempts and lockouts are stored (admin: Axes) and logged.
INSTALLED_APPS.append("axes")
AUTHENTICATION_BACKENDS.insert(0, "axes.backends.AxesStandaloneBackend")
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
AXES_FAILURE_LIMIT = _positive_int("LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = _positive_int("LOGIN_LOCKOUT_MINUTES", 15) / 60  # hours, as a float
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "wecom_ai.throttling.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_SENSITIVE_PARAMETERS = ["password"]
# REST API: per account, per address, and anonymous callers per address.
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = [
    "wecom_ai.throttling.AccountRateThrottle",
    "wecom_ai.throttling.AddressRateThrottle",
    "wecom_ai.throttling.AnonymousRateThrottle",
]
REST_FRAMEWORK["NUM_PROXIES"] = TRUSTED_PROXY_COUNT or None  # DRF's own address lookup
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    "user": env.str("API_RATE_PER_ACCOUNT", default="120/min"),
    "address": env.str("API_RATE_PER_ADDRESS", default="300/min"),
    "anon": env.str("API_RATE_ANONYMOUS", default="30/min"),
}


# --- monitoring: /metrics (issue 16) -------------------------------------------------------------
# Prometheus scrapes /metrics with `Authorization: Bearer METRICS_TOKEN`, or from an address in
# METRICS_ALLOWED_NETWORKS (comma-separated CIDRs; behind proxies see TRUSTED_PROXY_COUNT).
# With neither set the endpoint refuses everyone.
METRICS_TOKEN = _secret("METRICS_TOKEN") or ""


def _networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(item, strict=False) for item in env.list(name, default=[])]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must list networks like 10.0.0.0/8: {exc}") from exc


METRICS_ALLOWED_NETWORKS = _networks("METRICS_ALLOWED_NETWORKS")
# Where every process of this host writes its samples (prometheus_client's multiprocess
# mode; the runner and compose set it and empty it at start). Unset: each process counts
# only for itself, and /metrics shows the web process's own figures.
METRICS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")

# Alert e-mail (Admin → Alert channels): EMAIL_URL like smtp+tls://user:password@host:587
# (django-environ's email_url; the password may come from EMAIL_URL_FILE). Unset: mail is
# written to the log (console backend), so nothing leaves a development machine.
_email = env.email_url_config(_secret("EMAIL_URL") or "consolemail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = _email.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="wecom-ai@localhost")
