"""Settings: every value from an environment variable (README.md has the table)."""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import dj_database_url
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from aipb import embedded, queue_names
from aipb.env import env_bool, env_decimal, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

# With DATABASE_URL and REDIS_URL both unset we run on the embedded servers under ./var/
# (`python -m aipb.embedded up`, which `make run` and `make test` call).
EMBEDDED = not os.environ.get("DATABASE_URL") and not os.environ.get("REDIS_URL")
_embedded_env = embedded.read_env_file() if EMBEDDED else {}
if EMBEDDED and not _embedded_env:
    raise ImproperlyConfigured(
        "DATABASE_URL and REDIS_URL are unset and the embedded servers are not set up: "
        "run `make run`, or `.venv/bin/python -m aipb.embedded up`, or set both URLs"
    )

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY") or _embedded_env.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set (production refuses to start without one)")
    SECRET_KEY = "insecure-debug-only-key"  # noqa: S105 - DEBUG only

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
CSRF_FAILURE_VIEW = "aipb.views.csrf_failure"  # JSON error shape under /api/

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as static files: /api/docs/ works with no network
    "django_rq",
    "django_prometheus",
    "axes",  # login throttling (see AXES_* below)
    "aipb",
    "jobs",
    "dlq",
    "usage",
    "monitoring",
    "audit",
    "schedules",
    "webhooks",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # static files from the app itself in every mode (no proxy needed for the admin); answers before
    # sessions and auth run, so a stylesheet costs no database query
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "aipb.middleware.CSPMiddleware",  # django-csp's, the policy from the settings built once
    "aipb.middleware.RequestIdMiddleware",  # first of ours: every later line of the request carries its id
    "aipb.middleware.ApiBodySizeLimitMiddleware",
    "aipb.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # last, so it is the first to see the response: a locked-out admin login becomes axes' 429
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "aipb.urls"
WSGI_APPLICATION = "aipb.wsgi.application"
ASGI_APPLICATION = "aipb.asgi.application"

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

DATABASE_URL = env_str("DATABASE_URL") or _embedded_env.get("DATABASE_URL", "")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...)")
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 10
# Django's psycopg pool, per process: connections bounded whatever the number of threads (the threaded worker
# runs AI_WORKER_THREADS attempts, each holding a connection only for its short transactions). 0: no pool,
# one persistent connection per thread (DATABASE_CONN_MAX_AGE), as the forking worker's work-horses need.
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 0, minimum=0)
if DATABASE_POOL_MAX_SIZE:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections; Django must not
    DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": 1, "max_size": DATABASE_POOL_MAX_SIZE, "timeout": 30}

# aipb.prepared: the hot paths' hand-written statements (a POST's admission, an attempt's claim and end) are
# prepared once per connection. psycopg prepares nothing unless a threshold is set: this one is never reached by
# counting (Django's cursors bind on the client and never prepare), so only the statements that ask are prepared.
# 0 for a connection pooler that cannot keep prepared statements (PgBouncer before 1.21, or without
# max_prepared_statements in transaction mode): the statements then run as any other.
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
if DATABASE_PREPARED_STATEMENTS:
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 2**31 - 1

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTHENTICATION_BACKENDS = [
    # first: refuses a locked-out username+address before any password is checked
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = embedded.VAR_DIR / "static"  # filled by `collectstatic` (`make run` runs it)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # content-hashed names (a new release never meets a stale cached file, so WhiteNoise can send them
    # as immutable for ten years) and gzip copies, both written once by collectstatic
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Content-Security-Policy (django-csp) on every response. Scripts run only from this origin or with
# the request's nonce (`<script nonce="{{ request.csp_nonce }}">`): an injected inline script does not
# run. Styles allow inline: Django's own admin templates, django-rq's and ReDoc's runtime styles use it.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Redis: one pool per process with health checks, socket timeouts and retry on connection errors.
REDIS_URL = env_str("REDIS_URL") or _embedded_env.get("REDIS_URL", "")
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 10.0, minimum=0.1)
# After a failed call, web requests skip Redis for this long (aipb.redis_client.best_effort).
REDIS_FAIL_FAST_SECONDS = env_float("REDIS_FAIL_FAST_SECONDS", 5.0, minimum=0)
REDIS_SENTINELS = [
    (host, int(port)) for host, _, port in (item.rpartition(":") for item in env_list("REDIS_SENTINELS"))
]
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER", "mymaster")

# The cache (DRF's submission throttle counts) lives in Redis, shared by every web process: Django's
# default per-process memory cache would let a user submit once per gunicorn worker per rate.
CACHES = {"default": {"BACKEND": "aipb.cache.SharedRedisCache", "KEY_PREFIX": "aipb-cache"}}


def _with_query(url: str, **params: object) -> str:
    # string surgery, not urlunsplit: that turns unix:///path into unix:/path
    base, _, query = url.partition("?")
    existing = dict(parse_qsl(query))
    merged = {**{k: str(v) for k, v in params.items()}, **existing}
    return f"{base}?{urlencode(merged)}"


AI_QUEUES = queue_names.AI_QUEUES
if REDIS_SENTINELS:
    _rq_connection = {
        "SENTINELS": REDIS_SENTINELS,
        "MASTER_NAME": REDIS_SENTINEL_MASTER,
        "DB": 0,
        "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
        # django-rq passes none otherwise: a Sentinel that hangs (not dies) would block a worker's reconnect
        "SENTINEL_KWARGS": {"socket_timeout": REDIS_SOCKET_TIMEOUT},
    }
else:
    _rq_connection = {
        "URL": _with_query(REDIS_URL, socket_timeout=REDIS_SOCKET_TIMEOUT, health_check_interval=30),
    }


def _worker_class(path: str) -> str:
    # The classes lived in aipb.worker until the layers were enforced (aipb imports no app); keep the old
    # value working in deployments that set it.
    return {
        "aipb.worker.AIPBWorker": "jobs.worker.AIPBWorker",
        "aipb.worker.AIPBSimpleWorker": "jobs.worker.AIPBSimpleWorker",
    }.get(path, path)


RQ_QUEUES = {name: dict(_rq_connection, DEFAULT_TIMEOUT=900) for name in AI_QUEUES.values()}
RQ_QUEUES[queue_names.WEBHOOK_QUEUE] = dict(_rq_connection, DEFAULT_TIMEOUT=900)
RQ = {
    # No fork per job: 4-5x less CPU per job than the forking AIPBWorker (bench/RESULTS.md, section 1);
    # provider calls carry their own timeout and a dead worker's job comes back through its lease.
    "WORKER_CLASS": _worker_class(env_str("AI_WORKER_CLASS", "jobs.threaded_worker.AIPBThreadedWorker")),
    "COMMIT_MODE": "auto",  # we enqueue on commit ourselves (jobs.queues)
}
RQ_SHOW_ADMIN_LINK = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "aipb.api.TokenAuthentication",  # DRF's, its query compiled once per process
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["aipb.api.JSONParser"],  # DRF's, with deep nesting a 400
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "aipb.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_RATES": {"submit": env_str("AI_SUBMIT_THROTTLE_RATE", "1200/min")},
}
# Login throttling (django-axes, aipb.login_throttle): a username+address pair is locked out after this many
# consecutive failures on /admin/login/ and POST /api/auth/token, for the lockout time or until an operator
# resets it (`manage.py axes_reset_ip_username IP USERNAME`). Counts live in Postgres, shared by every process.
AIPB_LOGIN_FAILURE_LIMIT = env_int("AIPB_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AIPB_LOGIN_LOCKOUT_MINUTES = env_int("AIPB_LOGIN_LOCKOUT_MINUTES", 15, minimum=1)
# Reverse proxies in front of the app that append to X-Forwarded-For: the client address is the one the
# outermost of them saw. 0 trusts no header (a client could write any address there).
AIPB_TRUSTED_PROXY_COUNT = env_int("AIPB_TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_FAILURE_LIMIT = AIPB_LOGIN_FAILURE_LIMIT
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]  # neither alone: one address cannot lock out a user
AXES_COOLOFF_TIME = timedelta(minutes=AIPB_LOGIN_LOCKOUT_MINUTES)
AXES_RESET_ON_SUCCESS = True
# Guesses during a lockout are refused unchecked and do not restart it, so Retry-After is the truth.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_CLIENT_IP_CALLABLE = "aipb.login_throttle.client_ip"
AXES_DISABLE_ACCESS_LOG = True  # a row per successful login that nothing prunes; last_login is kept anyway
AXES_VERBOSE = False  # no start-up banner on every manage.py command
REST_FRAMEWORK["NUM_PROXIES"] = AIPB_TRUSTED_PROXY_COUNT  # DRF's throttles see the same client address

if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "aipb API",
    "DESCRIPTION": "AI page-generation jobs: submit, watch, retry; dead letters, queue control, usage and cost.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from the drf-spectacular-sidecar package (pinned), not a CDN
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two models have a `status` field: name each enum, so neither becomes "Status9c3Enum".
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.JobStatus",
        "DeadLetterStatusEnum": "dlq.models.DeadLetterStatus",
    },
}

# Request bodies: 1 MiB is far above the largest valid job (20,000-character prompt + options).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("AI_MAX_REQUEST_BYTES", 1_048_576, minimum=1024)

PROMETHEUS_EXPORT_MIGRATIONS = False

# --- the AI pipeline ---
AI_DEFAULT_PROVIDER = env_str("AI_DEFAULT_PROVIDER")
AI_DEFAULT_MODEL = env_str("AI_DEFAULT_MODEL")
AI_MAX_ATTEMPTS = env_int("AI_MAX_ATTEMPTS", 3, minimum=1)
# A worker whose last heartbeat is older than this is gone: not counted in ai_workers or queue status, and
# unregistered by reconcile. Idle workers beat at least every 60 s (jobs.worker.ResilienceMixin).
AI_WORKER_GONE_SECONDS = env_int("AI_WORKER_GONE_SECONDS", 90, minimum=65)
# Attempts one AIPBThreadedWorker process runs at once; a host's processes add up to AI_WORKER_CONCURRENCY.
AI_WORKER_THREADS = env_int("AI_WORKER_THREADS", 8, minimum=1)
# On SIGTERM a threaded worker stops taking jobs and waits this long for the attempts in flight.
AI_WORKER_SHUTDOWN_GRACE_SECONDS = env_float("AI_WORKER_SHUTDOWN_GRACE_SECONDS", 30.0, minimum=0)
# Retire a worker process after this many jobs (0: never); its pool starts a new one (jobs.worker.RecycleMixin).
AI_WORKER_MAX_JOBS = env_int("AI_WORKER_MAX_JOBS", 0, minimum=0)
AI_WORKER_CONCURRENCY = env_int("AI_WORKER_CONCURRENCY", 10, minimum=1)
# Fair sharing (jobs.fairness): one user's deliveries queued or running at once, so a user with a backlog cannot
# hold every worker; 0 = no cap. Default half of AI_WORKER_CONCURRENCY (set it from the whole fleet's concurrency
# when several hosts run workers). Overrides: "alice=8,group:batch=2" (a user's own entry wins, else the largest
# of their groups').
AI_USER_MAX_IN_FLIGHT = env_int("AI_USER_MAX_IN_FLIGHT", max(1, AI_WORKER_CONCURRENCY // 2), minimum=0)


def _in_flight_overrides(raw: str) -> dict[str, dict[str, int]]:
    overrides: dict[str, dict[str, int]] = {"user": {}, "group": {}}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, value = item.rpartition("=")
        kind, key = ("group", name[len("group:") :]) if name.startswith("group:") else ("user", name)
        if not key.strip() or not value.strip().isdigit():
            raise ImproperlyConfigured(
                f"AI_USER_MAX_IN_FLIGHT_OVERRIDES: {item!r} is not NAME=N or group:NAME=N (N a whole number)"
            )
        overrides[kind][key.strip()] = int(value)
    return overrides


AI_USER_MAX_IN_FLIGHT_OVERRIDES = _in_flight_overrides(env_str("AI_USER_MAX_IN_FLIGHT_OVERRIDES"))
# Jobs one user may have waiting (queued or retrying); a submission past it is a 429. 0 = no cap.
AI_USER_MAX_QUEUED = env_int("AI_USER_MAX_QUEUED", 2000, minimum=0)
AI_RATE_LIMIT_PER_SECOND = env_float("AI_RATE_LIMIT_PER_SECOND", 20.0, minimum=0)
AI_RATE_LIMIT_BURST = env_float("AI_RATE_LIMIT_BURST", 0.0, minimum=0)  # 0 = one second's worth
AI_RATE_LIMIT_PER_PROVIDER = env_bool("AI_RATE_LIMIT_PER_PROVIDER", False)
AI_RATE_LIMIT_RETRY_SECONDS = env_float("AI_RATE_LIMIT_RETRY_SECONDS", 1.0, minimum=0)
AI_PROVIDER_TIMEOUT_SECONDS = env_float("AI_PROVIDER_TIMEOUT_SECONDS", 60.0, minimum=0.1)
AI_BACKOFF_BASE_SECONDS = env_float("AI_BACKOFF_BASE_SECONDS", 2.0, minimum=0)
AI_BACKOFF_MAX_SECONDS = env_float("AI_BACKOFF_MAX_SECONDS", 300.0, minimum=0)
AI_RETRY_AFTER_MAX_SECONDS = env_float("AI_RETRY_AFTER_MAX_SECONDS", 600.0, minimum=0)
AI_ENABLE_SIMULATED_PROVIDER = env_bool("AI_ENABLE_SIMULATED_PROVIDER", False)
# Routing (jobs.routing): a circuit per (provider, model) opens after this many provider-side failures in a row
# within the window (0: no circuits), stays open for the cool-down, then lets one probe through.
AI_CIRCUIT_FAILURE_THRESHOLD = env_int("AI_CIRCUIT_FAILURE_THRESHOLD", 5, minimum=0)
AI_CIRCUIT_WINDOW_SECONDS = env_float("AI_CIRCUIT_WINDOW_SECONDS", 60.0, minimum=1)
AI_CIRCUIT_COOLDOWN_SECONDS = env_float("AI_CIRCUIT_COOLDOWN_SECONDS", 30.0, minimum=0.1)
# Default fallback chains, e.g. "openai:gpt-4o-mini=anthropic:claude-3-5-haiku,google:gemini-2.0-flash;
# anthropic=openai:gpt-4o-mini" (a source is provider:model or a whole provider; jobs.routing.chains checks it).
AI_FALLBACKS = env_str("AI_FALLBACKS")
AI_ROUTING_POLICY = env_str("AI_ROUTING_POLICY", "ordered")  # ordered | cheapest | fastest
if AI_ROUTING_POLICY not in ("ordered", "cheapest", "fastest"):
    raise ImproperlyConfigured(f"AI_ROUTING_POLICY must be ordered, cheapest or fastest, got {AI_ROUTING_POLICY!r}")
# Let `usage prices sync` fetch the newest genai-prices data first (needs internet; off: the pinned package's).
AI_PRICES_AUTO_UPDATE = env_bool("AI_PRICES_AUTO_UPDATE", False)
AI_MAX_PROMPT_CHARS = 20_000
AI_MAX_OPTIONS_BYTES = 16_384
# Jobs one POST /api/ai/batches may carry (each counts against the submission throttle).
AI_BATCH_MAX_JOBS = env_int("AI_BATCH_MAX_JOBS", 1000, minimum=1)
# A running attempt whose worker has not finished it within this many seconds is presumed lost.
AI_LEASE_SECONDS = env_float("AI_LEASE_SECONDS", AI_PROVIDER_TIMEOUT_SECONDS + 60, minimum=1)
AI_DLQ_MAX_ENTRIES = env_int("AI_DLQ_MAX_ENTRIES", 10_000, minimum=1)
AI_DLQ_MAX_AGE_DAYS = env_int("AI_DLQ_MAX_AGE_DAYS", 0, minimum=0)  # 0 = no age limit
AI_VALIDATION_WINDOW_SECONDS = env_int("AI_VALIDATION_WINDOW_SECONDS", 600, minimum=1)
# Schedules (schedules/): how often the scheduler looks for due firings, how many schedules a user may keep,
# and how long firing records are kept.
AI_SCHEDULER_TICK_SECONDS = env_float("AI_SCHEDULER_TICK_SECONDS", 5.0, minimum=0.1)
AI_SCHEDULES_PER_USER_MAX = env_int("AI_SCHEDULES_PER_USER_MAX", 100, minimum=1)
AI_SCHEDULE_FIRINGS_KEEP_DAYS = env_int("AI_SCHEDULE_FIRINGS_KEEP_DAYS", 30, minimum=1)
# Budgets (usage.budgets): the monthly USD limit of each user without a limit of their own (unset = unlimited),
# and the percent of a limit at which it counts as nearly exhausted (for the default and new limits).
AI_BUDGET_DEFAULT_MONTHLY_USD = env_decimal("AI_BUDGET_DEFAULT_MONTHLY_USD", minimum=Decimal(0), places=6)
AI_BUDGET_SOFT_PERCENT = env_int("AI_BUDGET_SOFT_PERCENT", 80, minimum=1)
if AI_BUDGET_SOFT_PERCENT > 100:
    raise ImproperlyConfigured(f"AI_BUDGET_SOFT_PERCENT must be from 1 to 100, got {AI_BUDGET_SOFT_PERCENT}")

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL")
GEMINI_API_KEY = env_str("GEMINI_API_KEY")
GEMINI_BASE_URL = env_str("GEMINI_BASE_URL")

METRICS_TOKEN = env_str("METRICS_TOKEN")
# prometheus_client multiprocess mode (gunicorn workers, RQ workers and their work-horses on one host
# share this directory; empty it before they start). Installed here, before any metric exists, so
# every metric value uses aipb.prometheus_multiprocess's bounded file naming.
if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    from aipb.prometheus_multiprocess import install as _install_multiprocess_metrics

    _install_multiprocess_metrics(os.environ["PROMETHEUS_MULTIPROC_DIR"])

# Security: TLS usually ends at the proxy, so the redirect is its own switch.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_TLS_PROXY", False) else None
# Embedded (local dev over http://127.0.0.1) defaults to plain cookies so the admin login works.
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG and not EMBEDDED)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0, minimum=0)
# Off by default: both commit every subdomain to HTTPS (preload: for years, in browsers' built-in lists).
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)

# plain: "<time> <level> <logger> <pid> <message> request_id=…"; json: one object a line (aipb.logs)
# Tracing (aipb/tracing.py) is configured by the standard OTEL_* variables, read by the OpenTelemetry SDK itself;
# these two are ours: prompts and pages on spans (personal data: opt-in), and the link to a trace in the UI.
AIPB_TRACE_CONTENT = env_bool("AIPB_TRACE_CONTENT", False)
AIPB_TRACE_SQL = env_bool("AIPB_TRACE_SQL", False)  # a worker's span per SQL statement (aipb.tracing)
AIPB_TRACE_URL_TEMPLATE = env_str("AIPB_TRACE_URL_TEMPLATE", "")
if AIPB_TRACE_URL_TEMPLATE and "{trace_id}" not in AIPB_TRACE_URL_TEMPLATE:
    raise ImproperlyConfigured("AIPB_TRACE_URL_TEMPLATE must contain {trace_id}")
AIPB_LOG_FORMAT = env_str("AIPB_LOG_FORMAT", "plain").lower()
if AIPB_LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"AIPB_LOG_FORMAT must be plain or json, not {AIPB_LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "aipb.logs.RequestIdFilter"},
        "rq_delivery_chatter": {"()": "aipb.logs.RQDeliveryChatterFilter"},
    },
    "formatters": {"plain": {"()": "aipb.logs.PlainFormatter"}, "json": {"()": "aipb.logs.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": AIPB_LOG_FORMAT, "filters": ["request_id"]}
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "rq.worker": {"filters": ["rq_delivery_chatter"]},
    },
}

# Webhooks (webhooks/): signed deliveries of job events, sent by the workers on their own queue.
# Hosts (exact names or IP literals) a webhook may point at although they are not public; plain http is accepted
# for them too. Empty in production; 127.0.0.1 for tests and local development.
AI_WEBHOOK_ALLOWED_HOSTS = frozenset(host.lower().strip("[]") for host in env_list("AI_WEBHOOK_ALLOWED_HOSTS"))
AI_WEBHOOK_TIMEOUT_SECONDS = env_float("AI_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# Seconds before each retry of a failed delivery: the first within 10 s, the next within a minute, then hours.
# Attempts = 1 + the number of delays; a delivery that fails them all is `failed` (visible, re-sendable).
AI_WEBHOOK_RETRY_SCHEDULE = tuple(
    float(item) for item in env_list("AI_WEBHOOK_RETRY_SCHEDULE", "5,45,300,1800,7200,18000,36000")
)
# After a secret is rotated, deliveries are signed with the old one too for this long.
AI_WEBHOOK_SECRET_GRACE_SECONDS = env_int("AI_WEBHOOK_SECRET_GRACE_SECONDS", 86_400, minimum=0)
