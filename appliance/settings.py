"""The one settings module of the appliance.

Everything is configured through APPLIANCE_* environment variables (see
docs/architecture.md for the list); the defaults boot a development appliance on
loopback against the local PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

from pathlib import Path

from appliance.core.dburl import database_from_url
from appliance.core.env import SettingError, env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

PRODUCTION = env_bool("PRODUCTION", False)
DEBUG = env_bool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise SettingError("APPLIANCE_DEBUG must be off when APPLIANCE_PRODUCTION is on")
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise SettingError("APPLIANCE_SECRET_KEY (or APPLIANCE_SECRET_KEY_FILE) is required in production")
    SECRET_KEY = "development-only-not-secret"  # noqa: S105 - dev default, refused in production
elif PRODUCTION and len(SECRET_KEY) < 50:
    raise SettingError("APPLIANCE_SECRET_KEY must be at least 50 characters")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "appliance.core",
    "appliance.audit",
    "appliance.accounts",
    "appliance.nodes",
    "appliance.catalog",
    "appliance.rollouts",
    "appliance.agent",
    "appliance.optimisation",
    "appliance.provisioning",
    "appliance.policies",
    "appliance.gateway",
    "appliance.console",
    "appliance.metrics",
]
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:overview"

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "appliance.core.middleware.ContentSecurityPolicyMiddleware",
    "appliance.core.middleware.RefuseNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "appliance.audit.middleware.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "appliance.urls"
WSGI_APPLICATION = "appliance.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# "none": a process with no database (a provisioned node's agent, which speaks to the control plane
# over HTTP with the node's own credential): any query fails loudly instead of reaching a server.
_DB_URL = env_str("DB_URL", "postgresql://postgres@127.0.0.1:5432/appliance")
DATABASES = {
    "default": {"ENGINE": "django.db.backends.dummy"} if _DB_URL == "none" else database_from_url(_DB_URL, base_dir=BASE_DIR)
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
REQUIRE_ADMIN_TOTP = env_bool("REQUIRE_ADMIN_TOTP", False)
SESSION_COOKIE_AGE = env_int("SESSION_AGE_S", 8 * 3600, minimum=60)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Strict"
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# In production the console is served over HTTPS (directly or by a TLS proxy that sets X-Forwarded-Proto).
SECURE_SSL_REDIRECT = env_bool("SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# HSTS preload is for public domains; an on-premises appliance has internal names.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'",
)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "appliance.accounts.authentication.OperatorTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["appliance.accounts.permissions.RolePermission"],
    "DEFAULT_SCHEMA_CLASS": "appliance.core.api.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "appliance.core.api_input.Pagination",
    "DEFAULT_PARSER_CLASSES": [
        "appliance.core.api_input.JSONParser",
        "appliance.core.api_input.FormParser",
        "appliance.core.api_input.MultiPartParser",
    ],
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "appliance.core.api.exception_handler",
    # ?format= is ours (audit export), not content negotiation.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Inference appliance control plane",
    "DESCRIPTION": "Nodes, models, versions, deployments, tenants, API keys and the audit trail.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a field named state with their own choices: each set gets its own name.
    "ENUM_NAME_OVERRIDES": {"Classification": "appliance.policies.choices.Classification",
                            "JobStateEnum": "appliance.optimisation.choices.JobState",
                            "ProvisioningRunKindEnum": "appliance.provisioning.choices.RunKind",
                            # Provisioning runs and MIG reconfigurations (the same four states; jobs add cancelled).
                            "RunStateEnum": "appliance.provisioning.choices.RunState"},
}
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- Celery (RabbitMQ by default; see docs/architecture.md for why) ---------------
INSTANCE = env_str("INSTANCE", "appliance")
CELERY_BROKER_URL = env_str("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# RabbitMQ's management API with an administrator's credentials (http://user:password@host:15672;
# APPLIANCE_BROKER_ADMIN_URL_FILE in production): enrolment gives each node a broker user of its
# own, limited to the node's queue (nodes/broker.py). Unset: no per-node broker users.
BROKER_ADMIN_URL = env_str("BROKER_ADMIN_URL", "")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "broker"
    # Kombu's filesystem transport does not create its folders.
    (_queue_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_queue_dir / "processed"),
        "store_processed": False,
    }
CELERY_TASK_DEFAULT_QUEUE = f"{INSTANCE}.control"
# Optimisation jobs (quantise, measure, gate) run on their own worker: minutes each, and the
# control queue's rollouts must not wait behind them.
OPTIMISE_QUEUE = f"{INSTANCE}.optimise"
# Rows of the calibration set static INT8 reads; requests per speed measurement (batch 1, and
# again at concurrency 16); at most this many layers mixed precision keeps in float.
OPTIMISE_CALIBRATION_ROWS = env_int("OPTIMISE_CALIBRATION_ROWS", 256, minimum=1)
OPTIMISE_SPEED_REQUESTS = env_int("OPTIMISE_SPEED_REQUESTS", 400, minimum=20)
OPTIMISE_MIXED_MAX_STEPS = env_int("OPTIMISE_MIXED_MAX_STEPS", 8, minimum=0)
# How long a gate run waits for a generative version's vLLM engine to start (compiled: minutes on a small CPU).
GATE_ENGINE_START_TIMEOUT_S = env_int("GATE_ENGINE_START_TIMEOUT_S", 900, minimum=10)
# A profile search's default budget: no profile starts after it (a search may ask for its own).
PROFILE_SEARCH_TIME_LIMIT_S = env_int("PROFILE_SEARCH_TIME_LIMIT_S", 3600, minimum=60)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE = {
    "audit-checkpoint": {"task": "audit.checkpoint", "schedule": env_float("AUDIT_CHECKPOINT_S", 300.0)},
    "audit-link": {"task": "audit.link", "schedule": env_float("AUDIT_LINK_S", 30.0),
                   "options": {"expires": env_float("AUDIT_LINK_S", 30.0)}},
    "health-sweep": {
        "task": "nodes.health_sweep",
        "schedule": env_float("HEALTH_PERIOD_S", 2.0),
        # A sweep not started within a period is stale: the next one replaces it.
        "options": {"expires": env_float("HEALTH_PERIOD_S", 2.0)},
    },
    "metrics-collect": {
        "task": "metrics.collect",
        "schedule": env_float("METRICS_COLLECT_S", 15.0),
        "options": {"expires": env_float("METRICS_COLLECT_S", 15.0)},
    },
    "rollout-tick": {
        "task": "rollouts.tick",
        "schedule": env_float("ROLLOUT_TICK_S", 1.0),
        "options": {"expires": env_float("ROLLOUT_TICK_S", 1.0)},
    },
}
# Provisioning from the control plane (appliance/provisioning/): the site's inventory and variables
# (files on the control plane; the variables file may be Ansible-Vault-encrypted only with a vault
# password file in ANSIBLE_VAULT_PASSWORD_FILE), the playbooks of the release, the toolchain.
ANSIBLE_DIR = BASE_DIR / "ansible"
ANSIBLE_PLAYBOOK = Path(env_str("ANSIBLE_PLAYBOOK", str(BASE_DIR / "var" / "build" / "ansible" / "bin" / "ansible-playbook")))
ANSIBLE_INVENTORY = env_str("ANSIBLE_INVENTORY", "")
ANSIBLE_EXTRA_VARS = env_str("ANSIBLE_EXTRA_VARS", "")
# A drift check (node.yml --check --diff over every node) this often, in seconds (0: never).
DRIFT_CHECK_S = env_float("DRIFT_CHECK_S", 6 * 3600.0)
if DRIFT_CHECK_S > 0:
    CELERY_BEAT_SCHEDULE["drift-check"] = {"task": "provisioning.drift_check", "schedule": DRIFT_CHECK_S,
                                           "options": {"expires": DRIFT_CHECK_S}}  # fmt: skip

# The console's time series: minute rows kept this many hours, hourly roll-ups this many days.
METRICS_MINUTE_KEEP_H = env_int("METRICS_MINUTE_KEEP_H", 48, minimum=7)
METRICS_HOUR_KEEP_D = env_int("METRICS_HOUR_KEEP_D", 90, minimum=8)

# --- Artifacts, nodes, gateway ------------------------------------------------------
ARTIFACT_ROOT = Path(env_str("ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))
ARTIFACT_MAX_BYTES = env_int("ARTIFACT_MAX_BYTES", 2 * 1024**3, minimum=1)
# What an archive artifact (python format) may unpack to on a node: a small gzip of zeros must not fill its disk.
ARTIFACT_MAX_UNPACKED_BYTES = env_int("ARTIFACT_MAX_UNPACKED_BYTES", 8 * 1024**3, minimum=1)
NODE_HEARTBEAT_S = env_float("NODE_HEARTBEAT_S", 2.0)
# The share of a CPU node's memory its generative engines may hold together (catalog/generative.py).
GENERATIVE_MEMORY_FRACTION = env_float("GENERATIVE_MEMORY_FRACTION", 0.5)
NODE_STALE_AFTER_S = env_float("NODE_STALE_AFTER_S", 10.0)
# A provisioned node's way to the control plane (ansible/roles/node_agent writes them): its base
# URL, the node's own credential (from enrolment) and the CA of its TLS certificate. Artifacts a
# node's store lacks are fetched there (catalog.artifacts.artifact_fetch).
CONTROL_PLANE_URL = env_str("CONTROL_PLANE_URL", "")
NODE_CREDENTIAL_FILE = env_str("NODE_CREDENTIAL_FILE", "")
CA_FILE = env_str("CA_FILE", "")
# Join tokens (enrolment of a new server): how long an operator may make one live, in seconds.
JOIN_TOKEN_MIN_TTL_S = 60
JOIN_TOKEN_MAX_TTL_S = 7 * 24 * 3600
JOIN_TOKEN_DEFAULT_TTL_S = env_int("JOIN_TOKEN_DEFAULT_TTL_S", 3600)
TRITON_LOAD_TIMEOUT_S = env_float("TRITON_LOAD_TIMEOUT_S", 120.0)
# Size of each Triton's local response cache (for models whose profile enables it); 0 turns it off.
TRITON_CACHE_BYTES = env_int("TRITON_CACHE_BYTES", 64 * 1024 * 1024, minimum=0)
HEALTH_PROBE_TIMEOUT_S = env_float("HEALTH_PROBE_TIMEOUT_S", 2.0)
RECONFIG_DRAIN_TIMEOUT_S = env_float("RECONFIG_DRAIN_TIMEOUT_S", 60.0)
# Lets a reconfiguration request name a step to fail (or kill the agent) at: tests and drills only.
ALLOW_FAULT_INJECTION = env_bool("ALLOW_FAULT_INJECTION", False)
HEALTH_TEMP_DEGRADED_C = env_int("HEALTH_TEMP_DEGRADED_C", 85)
HEALTH_TEMP_UNHEALTHY_C = env_int("HEALTH_TEMP_UNHEALTHY_C", 95)
HEALTH_ECC_CORRECTED_DEGRADED = env_int("HEALTH_ECC_CORRECTED_DEGRADED", 1000, minimum=1)
HEALTH_XID_WINDOW_S = env_int("HEALTH_XID_WINDOW_S", 600, minimum=1)
RETIRE_GRACE_S = env_float("RETIRE_GRACE_S", 3.0)
# A rollout whose replicas are not all live this long after it began is rolled back.
ROLLOUT_LOAD_TIMEOUT_S = env_float("ROLLOUT_LOAD_TIMEOUT_S", 600.0)
# A start or replica task not picked up within this long is sent again (its claim makes that safe).
ROLLOUT_RESEND_AFTER_S = env_float("ROLLOUT_RESEND_AFTER_S", 30.0)
GATEWAY_REFRESH_S = env_float("GATEWAY_REFRESH_S", 1.0)
# Drills only (with ALLOW_FAULT_INJECTION): the snapshot for the native front is written as
# "garbage" or with an "unknown-version", to show that the front then hands every call over.
GATEWAY_SNAPSHOT_FAULT = env_str("GATEWAY_SNAPSHOT_FAULT", "")
if GATEWAY_SNAPSHOT_FAULT not in ("", "garbage", "unknown-version") or (GATEWAY_SNAPSHOT_FAULT and not ALLOW_FAULT_INJECTION):
    raise SettingError("APPLIANCE_GATEWAY_SNAPSHOT_FAULT: garbage or unknown-version, and only with APPLIANCE_ALLOW_FAULT_INJECTION")
# Upstream deadline for requests that bring none of their own.
GATEWAY_DEFAULT_TIMEOUT_S = env_float("GATEWAY_DEFAULT_TIMEOUT_S", 60.0)
# The zone the gateway and its Redis response cache live in (the residency policy decides what may be cached here).
GATEWAY_ZONE = env_str("GATEWAY_ZONE", "default")
# The gateway address client teams are given (the console's ready snippet for a new key).
GATEWAY_PUBLIC_ADDRESS = env_str("GATEWAY_PUBLIC_ADDRESS", "127.0.0.1:8100")
# Admission (gateway/admission.py): per-model queue bound, longest wait for a slot, first
# per-replica concurrency limit, GPU free-memory fraction under which limits stop growing.
GATEWAY_QUEUE_MAX = env_int("GATEWAY_QUEUE_MAX", 256, minimum=0)
GATEWAY_QUEUE_WAIT_S = env_float("GATEWAY_QUEUE_WAIT_S", 2.0)
GATEWAY_INITIAL_LIMIT = env_float("GATEWAY_INITIAL_LIMIT", 16.0)
# Upper bound of any replica's concurrency limit (a cap an operator may lower for fragile backends).
GATEWAY_MAX_LIMIT = env_float("GATEWAY_MAX_LIMIT", 512.0)
GATEWAY_MIN_GPU_HEADROOM = env_float("GATEWAY_MIN_GPU_HEADROOM", 0.1)
# Pause before retrying the same (only) replica after it was not there to answer.
GATEWAY_RETRY_PAUSE_S = env_float("GATEWAY_RETRY_PAUSE_S", 0.05)
# How long routing passes over a replica that was not there (its Triton down, or up without
# the model), while another replica of the model is up; the health sweep and the snapshot
# take it out for good if it stays away.
GATEWAY_EJECT_S = env_float("GATEWAY_EJECT_S", 1.0)
# The gateway's native front (appliance/gateway/native/), built by `make native`.
GATEWAY_NATIVE_BINARY = Path(env_str("GATEWAY_NATIVE_BINARY", str(BASE_DIR / "var" / "build" / "gatewayd")))
# How often a request held for a model waking from zero looks for its replica.
GATEWAY_WAKE_POLL_S = env_float("GATEWAY_WAKE_POLL_S", 0.1)
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHE_TTL_S = env_int("CACHE_TTL_S", 300, minimum=1)
# The semantic cache's embedder (a catalog model the appliance serves) and how many
# scopes (tenant × model × version) each gateway process keeps in memory.
SEMANTIC_EMBEDDER = env_str("SEMANTIC_EMBEDDER", "minilm")
SEMANTIC_MAX_SCOPES = env_int("SEMANTIC_MAX_SCOPES", 256, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"},
    },
    "filters": {"correlation": {"()": "appliance.audit.context.CorrelationFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["correlation"]},
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
