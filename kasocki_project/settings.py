"""Settings for the Kasocki project.

Deployment values come from environment variables; the defaults suit a laptop.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-local-development-key-change-me")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")

INSTALLED_APPS = [
    # daphne first, so that `manage.py runserver` serves the ASGI application.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "kasocki_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "kasocki_project.urls"

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
            ],
        },
    },
]

ASGI_APPLICATION = "kasocki_project.asgi.application"

# The service's own queries (whitelist, live connections) run on one thread per process and
# reuse its connection for DATABASE_CONN_MAX_AGE seconds; 0 closes it after every use.
DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL",
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}

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
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
# The viewer page loads the official socket.io client, installed from npm by `npm ci`.
STATICFILES_DIRS = [("vendor/socket.io-client", BASE_DIR / "node_modules" / "socket.io-client" / "dist")]
# Serve static files from the app server itself (runserver, daphne or uvicorn): for development.
# Production turns this off, runs collectstatic and serves STATIC_ROOT from a web server or CDN.
SERVE_STATIC = env_bool("DJANGO_SERVE_STATIC", DEBUG)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Behind a TLS-terminating proxy that always sets X-Forwarded-Proto (and with the port reachable
# only from it): requests it marks https are secure, which the admin's CSRF origin check needs.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Kasocki -----------------------------------------------------------------
KAFKA_BOOTSTRAP_SERVERS = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": KAFKA_BOOTSTRAP_SERVERS}
KASOCKI_ALLOWED_TOPICS = env_list("KASOCKI_ALLOWED_TOPICS")
KASOCKI_ALLOWED_ORIGINS = env_list("KASOCKI_ALLOWED_ORIGINS")


def env_kasocki_settings() -> dict[str, object]:
    """Any other KASOCKI_* setting (limits, timeouts, ...) from an environment variable of the same name."""
    from kasocki_app.conf import DEFAULTS

    values: dict[str, object] = {}
    for name, default in DEFAULTS.items():
        raw = os.environ.get(name)
        if raw is None or name in {"KASOCKI_KAFKA_CONFIG", "KASOCKI_ALLOWED_TOPICS", "KASOCKI_ALLOWED_ORIGINS"}:
            continue
        if isinstance(default, bool):
            values[name] = env_bool(name, default)
        elif isinstance(default, (int, float)):
            values[name] = type(default)(raw)
        elif isinstance(default, list):
            values[name] = env_list(name)
        else:
            values[name] = raw
    return values


globals().update(env_kasocki_settings())

# Every line carries the connection's sid and client address; KASOCKI_LOG_FORMAT=json for JSON lines.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"connection": {"()": "kasocki_app.logs.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [sid=%(sid)s client=%(client)s] %(message)s"},
        "json": {"()": "kasocki_app.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["connection"],
            "formatter": "json" if os.environ.get("KASOCKI_LOG_FORMAT") == "json" else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "kasocki_app": {"level": os.environ.get("KASOCKI_LOG_LEVEL", "INFO")},
        # No handler of its own: Django's default one (printing under DEBUG) wrote every request
        # and "Not Found" line a second time beside root's.
        "django": {"level": "INFO"},
    },
}
