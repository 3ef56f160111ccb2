"""A minimal Django configuration for the peers that store messages through Django.

channels_postgres, channels-sqlite and channels-lite keep their tables in Django
models, so a worker that measures one of them configures Django here and runs
``migrate`` for that peer's database before anything is timed. Each peer gets its
own database (SQLite files in the run's scratch directory, a PostgreSQL schema of
its own), so the benchmark never touches another user's tables.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from benchmarks.specs import postgres_url

__all__ = ["PEER_PG_SCHEMA", "django_postgres_settings", "setup"]

PEER_PG_SCHEMA = "bench_peer_pg"

_APP_DATABASE = {
    "channels_postgres": "channels_postgres",
    "channels_sqlite": "channels_sqlite",
    "channels_lite": "channels_lite",
}


class BenchRouter:
    """Send each peer app's models to that peer's own database, and nothing else there."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return _APP_DATABASE.get(model._meta.app_label)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return _APP_DATABASE.get(model._meta.app_label)

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        wanted = _APP_DATABASE.get(app_label, "default")
        return db == wanted


def django_postgres_settings() -> dict[str, Any]:
    """Django ``DATABASES`` entry for the benchmark PostgreSQL, in its own schema."""
    parts = urlsplit(postgres_url())
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or "postgres"),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
        "OPTIONS": {"options": f"-c search_path={PEER_PG_SCHEMA}"},
        "TIME_ZONE": None,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "AUTOCOMMIT": True,
        "ATOMIC_REQUESTS": False,
        "TEST": {},
    }


def _ensure_schema() -> None:
    import psycopg

    settings = django_postgres_settings()
    with psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        host=settings["HOST"],
        port=settings["PORT"],
        autocommit=True,
    ) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PEER_PG_SCHEMA}")


def setup(app: str, tmp: str) -> None:
    """Configure Django for one peer app and migrate that app's database.

    ``app`` is the peer's top-level module (``channels_postgres``...); ``tmp`` is the
    run's scratch directory, which holds the SQLite files.
    """
    import django
    from django.conf import settings
    from django.core.management import call_command

    databases: dict[str, Any] = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(tmp, "django.db")},
    }
    if app == "channels_postgres":
        _ensure_schema()
        databases["channels_postgres"] = django_postgres_settings()
    elif app in _APP_DATABASE:
        databases[app] = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tmp, f"{app}.db"),
            "OPTIONS": {"timeout": 20},
        }
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            USE_TZ=True,
            SECRET_KEY="benchmarks-only",
            INSTALLED_APPS=[app] if app in _APP_DATABASE else [],
            DATABASES=databases,
            DATABASE_ROUTERS=["benchmarks.djangosetup.BenchRouter"],
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
            CHANNEL_LAYERS={},
        )
        django.setup()
    if app in _APP_DATABASE:
        call_command("migrate", app, database=_APP_DATABASE[app], verbosity=0)
