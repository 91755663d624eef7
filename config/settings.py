"""The only settings module. Every value comes from the environment (see README, "Configuration").

Embedded defaults make ``make run`` work on a fresh machine; nothing here is
production-only: environment variables decide.
"""

from __future__ import annotations

import re
from pathlib import Path

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from config.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_int_list,
    env_list,
    env_optional_str,
    env_path,
    env_size,
    env_str,
    instance_id_for,
)

django_stubs_ext.monkeypatch()  # generic admin/queryset classes at run time

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("KILN_VAR_DIR", BASE_DIR / "var")

DEBUG = env_bool("DEBUG", default=False)
_secret = env_optional_str("SECRET_KEY")
if _secret is None:
    if not DEBUG:
        msg = "SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off"
        raise ImproperlyConfigured(msg)
    _secret = "insecure-development-key-only-used-with-DEBUG-on"  # noqa: S105
elif _secret.startswith("change-me") and not DEBUG:
    msg = "SECRET_KEY still has the example value; generate a real one"
    raise ImproperlyConfigured(msg)
SECRET_KEY = _secret

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "config.outbox",
    "accounts",
    "registry",
    "deployments",
    "dashboard",
    "observability",
]

MIDDLEWARE = [
    "config.middleware.DrainRequestBodyMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "config.query.QueryGuardMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.PlatformErrorMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": database_from_url(DATABASE_URL, base_dir=BASE_DIR)}
if "CONN_MAX_AGE" in DATABASES["default"]:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("KILN_DB_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["ENGINE"] = str(DATABASES["default"]["ENGINE"]).replace(
    "django.db.backends.", "django_prometheus.db.backends."
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("KILN_CACHE_PREFIX", "kiln"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "registry:model-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", BASE_DIR / "staticfiles")
WHITENOISE_USE_FINDERS = DEBUG
STATICFILES_DIRS = [p for p in (BASE_DIR / "static", BASE_DIR / "static_build") if p.is_dir()]

# Uploads stream to disk (never held in memory) through a handler that hashes and bounds them.
KILN_MAX_UPLOAD_BYTES = env_int("KILN_MAX_UPLOAD_BYTES", 512 * 1024 * 1024, minimum=1)
# Archives (TorchScript, .pt2) may not unpack to more than this (zip bombs).
KILN_MAX_UNPACKED_BYTES = env_int("KILN_MAX_UNPACKED_BYTES", 4 * KILN_MAX_UPLOAD_BYTES, minimum=1)
FILE_UPLOAD_MAX_MEMORY_SIZE = 0
FILE_UPLOAD_HANDLERS = ["registry.uploads.BoundedHashingUploadHandler"]
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("KILN_MAX_FORM_BYTES", 2 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200
DATA_UPLOAD_MAX_NUMBER_FILES = 2

KILN_ARTIFACT_ROOT = env_path("KILN_ARTIFACT_ROOT", VAR_DIR / "artifacts")
KILN_PUBLIC_URL = env_str("KILN_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")

# Model inspection and conversion run in child processes under these limits.
KILN_INSPECT_TIMEOUT_S = env_float("KILN_INSPECT_TIMEOUT_S", 60.0, minimum=1.0)
KILN_CONVERT_TIMEOUT_S = env_float("KILN_CONVERT_TIMEOUT_S", 600.0, minimum=1.0)
KILN_CONVERT_MEMORY_MB = env_int("KILN_CONVERT_MEMORY_MB", 8192, minimum=256)
KILN_PARITY_ATOL = env_float("KILN_PARITY_ATOL", 1e-4, minimum=0.0)
KILN_PARITY_RTOL = env_float("KILN_PARITY_RTOL", 1e-3, minimum=0.0)
KILN_PROFILE_MAX_BATCH = env_int("KILN_PROFILE_MAX_BATCH", 64, minimum=1, maximum=4096)
KILN_CONVERT_STALE_AFTER_S = env_float("KILN_CONVERT_STALE_AFTER_S", 1800.0, minimum=60.0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "config.pagination.DefaultPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "config.schema.PlatformSchema",
    "EXCEPTION_HANDLER": "config.exceptions.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "config.json_input.StrictJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_RATES": {},
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Kiln model platform API",
    "DESCRIPTION": "Register model versions, convert them to ONNX, deploy and observe them.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "WorkerStateEnum": "deployments.models.WorkerState",
        "RolloutStateEnum": "deployments.models.Rollout.State",
        "OnAliasMoveEnum": "deployments.models.AliasMovePolicy",
        "DeploymentStatusEnum": "deployments.models.DeploymentStatus",
        "VersionStatusEnum": "registry.models.VersionStatus",
    },
    # Workers report with their own token (deployments/api/views.py), not a user's API token.
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "workerToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "The report token the platform gave the worker when it started it.",
            }
        }
    },
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_DEFAULT_QUEUE = env_str("KILN_CELERY_QUEUE", "kiln")
# Long jobs (conversion, image builds) get their own queue so they never starve the
# short periodic ones (reconcile, sweeps); `make run` starts one worker per queue.
KILN_CELERY_LONG_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}.long"
CELERY_TASK_ROUTES = {
    "registry.convert_version": {"queue": KILN_CELERY_LONG_QUEUE},
    "deployments.build_worker_image": {"queue": KILN_CELERY_LONG_QUEUE},
    "deployments.measure_version": {"queue": KILN_CELERY_LONG_QUEUE},
}
# Above the longest task's hard limit, so Redis never redelivers a task that still runs.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("KILN_CELERY_VISIBILITY_TIMEOUT_S", 3600, minimum=60)
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Each tick writes a heartbeat to Redis (the healthcheck reads it); ticks come at least this often.
CELERY_BEAT_SCHEDULER = "config.beat:HeartbeatScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 5
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "sweep-stale-conversions": {
        "task": "registry.sweep_stale_conversions",
        "schedule": 60.0,
    },
}

# Task messages whose send failed after their transaction committed (the broker was down) are
# sent by this sweep as soon as the broker is back (config.outbox).
KILN_OUTBOX_SWEEP_S = env_float("KILN_OUTBOX_SWEEP_S", 2.0, minimum=0.5)
CELERY_BEAT_SCHEDULE["deliver-outbox"] = {
    "task": "outbox.deliver",
    "schedule": KILN_OUTBOX_SWEEP_S,
    "options": {"expires": KILN_OUTBOX_SWEEP_S * 2},
}

# Signed webhooks for release events (deployments.webhooks, docs/webhooks.md). Targets must be
# public addresses unless this allow-list (host names, addresses or CIDRs) names them.
KILN_WEBHOOK_ALLOWED_HOSTS = env_list("KILN_WEBHOOK_ALLOWED_HOSTS", [])
KILN_WEBHOOK_TIMEOUT_S = env_float("KILN_WEBHOOK_TIMEOUT_S", 10.0, minimum=0.5, maximum=60.0)
KILN_WEBHOOK_MAX_ATTEMPTS = env_int("KILN_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1, maximum=30)
KILN_WEBHOOK_BACKOFF_S = env_float("KILN_WEBHOOK_BACKOFF_S", 10.0, minimum=0.1)
KILN_WEBHOOK_BACKOFF_MAX_S = env_float("KILN_WEBHOOK_BACKOFF_MAX_S", 3600.0, minimum=1.0)
KILN_WEBHOOK_SWEEP_S = env_float("KILN_WEBHOOK_SWEEP_S", 10.0, minimum=0.5)
CELERY_BEAT_SCHEDULE["send-due-webhooks"] = {
    "task": "webhooks.send_due",
    "schedule": KILN_WEBHOOK_SWEEP_S,
    "options": {"expires": KILN_WEBHOOK_SWEEP_S * 2},
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# A converting version whose job has not been heard from for this long is resumed
# (its worker died); the sweep runs every KILN_CONVERSION_SWEEP_S seconds.
KILN_CONVERT_LEASE_S = env_float("KILN_CONVERT_LEASE_S", 60.0, minimum=2.0)
KILN_CONVERT_MAX_TRIES = env_int("KILN_CONVERT_MAX_TRIES", 3, minimum=1, maximum=20)
CELERY_BEAT_SCHEDULE["sweep-stale-conversions"]["schedule"] = env_float(
    "KILN_CONVERSION_SWEEP_S", 15.0, minimum=1.0
)

# Deployments: backends, the reconcile loop, reports, routing.
KILN_INSTANCE_ID = env_str("KILN_INSTANCE_ID", "") or instance_id_for(DATABASE_URL)
KILN_DEFAULT_BACKEND = env_choice("KILN_DEFAULT_BACKEND", "process", ("process", "docker", "swarm"))
KILN_PROCESS_BIND_HOST = env_str("KILN_PROCESS_BIND_HOST", "127.0.0.1")
KILN_MAX_REPLICAS = env_int("KILN_MAX_REPLICAS", 16, minimum=1, maximum=64)
KILN_RECONCILE_INTERVAL_S = env_float("KILN_RECONCILE_INTERVAL_S", 3.0, minimum=0.5)
KILN_REPORT_INTERVAL_S = env_float("KILN_REPORT_INTERVAL_S", 5.0, minimum=0.2)
KILN_WORKER_STALE_S = env_float("KILN_WORKER_STALE_S", 20.0, minimum=1.0)
KILN_WORKER_REPLACE_AFTER_S = env_float("KILN_WORKER_REPLACE_AFTER_S", 30.0, minimum=1.0)
KILN_WORKER_START_TIMEOUT_S = env_float("KILN_WORKER_START_TIMEOUT_S", 120.0, minimum=5.0)
KILN_CRASHLOOP_RESTARTS = env_int("KILN_CRASHLOOP_RESTARTS", 4, minimum=1)
KILN_RESTART_BACKOFF_MAX_S = env_float("KILN_RESTART_BACKOFF_MAX_S", 60.0, minimum=1.0)
KILN_DRAIN_DELAY_S = env_float("KILN_DRAIN_DELAY_S", 2.0, minimum=0.0)
KILN_DRAIN_GRACE_S = env_float("KILN_DRAIN_GRACE_S", 30.0, minimum=1.0)
KILN_WORKER_LOG_MAX_BYTES = env_int("KILN_WORKER_LOG_MAX_BYTES", 2 * 1024 * 1024, minimum=64 * 1024)
KILN_LATENCY_BUDGET_MS = env_float("KILN_LATENCY_BUDGET_MS", 50.0, minimum=0.1)
KILN_REPORT_RAW_RETENTION_S = env_float("KILN_REPORT_RAW_RETENTION_S", 3600.0, minimum=60.0)
KILN_REPORT_RETENTION_DAYS = env_float("KILN_REPORT_RETENTION_DAYS", 7.0, minimum=0.01)
KILN_HISTORY_RETENTION_DAYS = env_float("KILN_HISTORY_RETENTION_DAYS", 30.0, minimum=0.0)
CELERY_BEAT_SCHEDULE["prune-history"] = {"task": "deployments.prune_history", "schedule": 3600.0}
KILN_SERIES_MAX_WORKERS = env_int("KILN_SERIES_MAX_WORKERS", 24, minimum=1, maximum=1000)
KILN_MAX_REPORT_BYTES = env_int("KILN_MAX_REPORT_BYTES", 64 * 1024, minimum=1024)
KILN_ROUTING_KEY = env_str("KILN_ROUTING_KEY", f"{KILN_INSTANCE_ID}:routing")
KILN_GATEWAY_HOST = env_str("KILN_GATEWAY_HOST", "127.0.0.1")
KILN_GATEWAY_PORT = env_int("KILN_GATEWAY_PORT", 8100, minimum=1, maximum=65535)
KILN_GATEWAY_GRPC_PORT = env_int("KILN_GATEWAY_GRPC_PORT", 8101, minimum=-1, maximum=65535)
KILN_GATEWAY_GRPC_TARGET = env_str(
    "KILN_GATEWAY_GRPC_TARGET",
    f"{KILN_GATEWAY_HOST}:{KILN_GATEWAY_GRPC_PORT}" if KILN_GATEWAY_GRPC_PORT > 0 else "",
)
KILN_GATEWAY_URL = env_str("KILN_GATEWAY_URL", f"http://{KILN_GATEWAY_HOST}:{KILN_GATEWAY_PORT}").rstrip("/")
CELERY_BEAT_SCHEDULE["reconcile-deployments"] = {
    "task": "deployments.reconcile_all",
    "schedule": KILN_RECONCILE_INTERVAL_S,
    "options": {"expires": KILN_RECONCILE_INTERVAL_S * 2},
}
# The autoscaler's tick: load observed, decisions taken, activation requests answered.
KILN_AUTOSCALE_INTERVAL_S = env_float("KILN_AUTOSCALE_INTERVAL_S", 1.0, minimum=0.2)
CELERY_BEAT_SCHEDULE["autoscale"] = {
    "task": "deployments.autoscale",
    "schedule": KILN_AUTOSCALE_INTERVAL_S,
    "options": {"expires": KILN_AUTOSCALE_INTERVAL_S * 2},
}
CELERY_BEAT_SCHEDULE["downsample-reports"] = {"task": "deployments.downsample_reports", "schedule": 20.0}
KILN_ROLLOUT_INTERVAL_S = env_float("KILN_ROLLOUT_INTERVAL_S", 2.0, minimum=0.5)
CELERY_BEAT_SCHEDULE["advance-rollouts"] = {
    "task": "deployments.advance_rollouts",
    "schedule": KILN_ROLLOUT_INTERVAL_S,
    "options": {"expires": KILN_ROLLOUT_INTERVAL_S * 2},
}
# Serving-advice measurements (deployments.services.measurements): the real worker under a closed loop.
KILN_ADVICE_MEASURE_SECONDS = env_float("KILN_ADVICE_MEASURE_SECONDS", 3.0, minimum=0.1, maximum=60.0)
KILN_ADVICE_MEASURE_CLIENTS = env_int_list("KILN_ADVICE_MEASURE_CLIENTS", [1, 16, 64], minimum=1, maximum=512)
KILN_ADVICE_MEASURE_INSTANCES = env_int_list("KILN_ADVICE_MEASURE_INSTANCES", [1, 2], minimum=1, maximum=16)
KILN_ADVICE_MEASURE_AFTER_CONVERSION = env_bool("KILN_ADVICE_MEASURE_AFTER_CONVERSION", False)
KILN_ADVICE_MEASURE_TIMEOUT_S = env_float("KILN_ADVICE_MEASURE_TIMEOUT_S", 1800.0, minimum=30.0)
CELERY_BEAT_SCHEDULE["sweep-measurements"] = {"task": "deployments.sweep_measurements", "schedule": 30.0}
# The default service-level objective the dashboard and alerts flag.
KILN_SLO_ERROR_RATE = env_float("KILN_SLO_ERROR_RATE", 0.01, minimum=0.0, maximum=1.0)
KILN_SLO_P99_MS = env_float("KILN_SLO_P99_MS", 500.0, minimum=0.1)

# The docker backend: containers on the engine named by DOCKER_HOST (read by the docker SDK),
# and the worker images the platform builds for them (one per model version and flavour).
# "host", "bridge" (the engine's default bridge) or the name of a user-defined network (e.g. the
# compose stack's): every network but host publishes the worker's ports.
KILN_DOCKER_NETWORK = env_str("KILN_DOCKER_NETWORK", "host").strip()
if KILN_DOCKER_NETWORK == "none" or not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", KILN_DOCKER_NETWORK):
    msg = f"KILN_DOCKER_NETWORK={KILN_DOCKER_NETWORK!r}: use host, bridge or the name of a Docker network"
    raise ImproperlyConfigured(msg)
KILN_DOCKER_BIND_HOST = env_str("KILN_DOCKER_BIND_HOST", "127.0.0.1")
# "published": reach workers at KILN_DOCKER_BIND_HOST and the ports the engine published;
# "network": by container name on KILN_DOCKER_NETWORK (when the platform, the gateway and
# Prometheus run on that network too, as in the compose stack; nothing is published).
KILN_DOCKER_WORKER_ADDRESS = env_choice("KILN_DOCKER_WORKER_ADDRESS", "published", ("published", "network"))
KILN_DOCKER_PUBLIC_URL = env_str("KILN_DOCKER_PUBLIC_URL", "").rstrip("/")
KILN_DOCKER_MEMORY_LIMIT = env_size("KILN_DOCKER_MEMORY_LIMIT", "4g")
KILN_DOCKER_CPUS = env_float("KILN_DOCKER_CPUS", 0.0, minimum=0.0, maximum=1024.0)
KILN_DOCKER_RESTART_POLICY = env_str("KILN_DOCKER_RESTART_POLICY", "no").strip()
if not re.fullmatch(r"no|always|unless-stopped|on-failure(:[0-9]+)?", KILN_DOCKER_RESTART_POLICY):
    msg = (
        f"KILN_DOCKER_RESTART_POLICY={KILN_DOCKER_RESTART_POLICY!r}: use no, on-failure[:N], "
        "unless-stopped or always"
    )
    raise ImproperlyConfigured(msg)
KILN_DOCKER_ENGINE_TIMEOUT_S = env_float("KILN_DOCKER_ENGINE_TIMEOUT_S", 60.0, minimum=1.0)
KILN_DOCKER_BASE_IMAGE = env_str("KILN_DOCKER_BASE_IMAGE", "python:3.11-slim-bookworm")
KILN_DOCKER_GPU_BASE_IMAGE = env_str("KILN_DOCKER_GPU_BASE_IMAGE", "")
KILN_DOCKER_IMAGE_REPOSITORY = env_str("KILN_DOCKER_IMAGE_REPOSITORY", "kiln-worker").rstrip("/")
KILN_WHEELHOUSE_DIR = env_path("KILN_WHEELHOUSE_DIR", VAR_DIR / "wheelhouse")
KILN_IMAGE_BUILD_TIMEOUT_S = env_float("KILN_IMAGE_BUILD_TIMEOUT_S", 1800.0, minimum=60.0)
KILN_IMAGE_BUILD_LEASE_S = env_float("KILN_IMAGE_BUILD_LEASE_S", 120.0, minimum=5.0)
CELERY_BEAT_SCHEDULE["sweep-image-builds"] = {"task": "deployments.sweep_image_builds", "schedule": 30.0}
CELERY_BEAT_SCHEDULE["prune-worker-images"] = {"task": "deployments.prune_worker_images", "schedule": 600.0}

# The swarm backend: one Docker Swarm service per variant through the manager at DOCKER_HOST; it
# reuses the docker backend's images (pushed to the registry named in KILN_DOCKER_IMAGE_REPOSITORY),
# memory and CPU limits. Workers use host networking and bind free ports on their node.
KILN_SWARM_BIND_HOST = env_str("KILN_SWARM_BIND_HOST", "0.0.0.0")  # noqa: S104 - other machines route to it
KILN_SWARM_SHUTDOWN_DELAY_S = env_float("KILN_SWARM_SHUTDOWN_DELAY_S", 10.0, minimum=0.0, maximum=600.0)
KILN_SWARM_HEALTH_INTERVAL_S = env_float("KILN_SWARM_HEALTH_INTERVAL_S", 5.0, minimum=1.0, maximum=300.0)
KILN_SWARM_RESTART_DELAY_S = env_float("KILN_SWARM_RESTART_DELAY_S", 2.0, minimum=0.0, maximum=600.0)
KILN_SWARM_UPDATE_PARALLELISM = env_int("KILN_SWARM_UPDATE_PARALLELISM", 1, minimum=1, maximum=64)
KILN_SWARM_UPDATE_DELAY_S = env_float("KILN_SWARM_UPDATE_DELAY_S", 0.0, minimum=0.0, maximum=600.0)
KILN_SWARM_UPDATE_MONITOR_S = env_float("KILN_SWARM_UPDATE_MONITOR_S", 10.0, minimum=0.0, maximum=600.0)
KILN_SWARM_RESERVE_MEMORY = env_size("KILN_SWARM_RESERVE_MEMORY", "")
KILN_SWARM_RESERVE_CPUS = env_float("KILN_SWARM_RESERVE_CPUS", 0.0, minimum=0.0, maximum=1024.0)
# Credentials of the registry in KILN_DOCKER_IMAGE_REPOSITORY (pushes, and pulls by swarm nodes).
KILN_DOCKER_REGISTRY_USERNAME = env_str("KILN_DOCKER_REGISTRY_USERNAME", "")
KILN_DOCKER_REGISTRY_PASSWORD = env_str("KILN_DOCKER_REGISTRY_PASSWORD", "")
