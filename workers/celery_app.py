"""The Celery application for background embedding.

Start a worker with ``medpg worker`` (or ``celery -A workers.celery_app worker -Q medpg.embed``).
Importing this module creates only the Celery object: its configuration is built from medpg's
settings (``MEDPG_BROKER_URL``, queues, intervals) the first time Celery reads it, so importing
it from the CLI, tests or the API never reads the environment or connects anywhere. A process that
has its own Settings object (tests, the CLI) calls ``configure(settings)`` instead.

Delivery guarantees are PostgreSQL's, not the broker's: messages carry chunk ids only; a task
that runs twice, late or never is harmless because the database says what still needs a vector
and the periodic reconcile enqueues it again.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from medpg.config import Settings

EMBED_TASK = "medpg.embed_chunks"
RECONCILE_TASK = "medpg.reconcile"

app = Celery("medpg", include=["workers.tasks"])


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from medpg's: queues, routing, at-least-once delivery, beat schedule."""
    lease = settings.embed_lease_seconds
    config: dict[str, Any] = {
        # Messages are tiny (ids); results are not needed: the database holds them.
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: acknowledge after the task ran, take one message at a time. A task lost
        # with its worker is not redelivered by the broker (that could loop on a chunk that kills
        # workers); its chunks' leases expire and reconcile enqueues them again.
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # Redis redelivers unacknowledged messages after this; keep it above the lease.
        "broker_transport_options": {"visibility_timeout": max(3600, 2 * lease)},
        "task_default_queue": settings.control_queue,
        "task_routes": {
            "medpg.embed_chunks": {"queue": settings.embed_queue},
            "medpg.reconcile": {"queue": settings.control_queue},
        },
        "beat_schedule": {
            "medpg-reconcile": {
                "task": RECONCILE_TASK,
                "schedule": float(settings.reconcile_interval_seconds),
                "options": {"expires": float(settings.reconcile_interval_seconds)},
            }
        },
    }
    if settings.broker_url:
        config["broker_url"] = settings.broker_url
    return config


def _lazy_defaults() -> dict[str, Any]:
    from medpg.config import get_settings

    return celery_config(get_settings())


app.add_defaults(_lazy_defaults)


def configure(settings: Settings) -> Celery:
    """Use ``settings`` (not the process environment) for this process's app; returns the app.

    Safe to call again with other settings: the enqueue helpers in ``workers.tasks`` open their
    connections from the configuration current at the time, not from a pool made earlier.
    """
    app.conf.update(celery_config(settings))
    return app


__all__ = ["EMBED_TASK", "RECONCILE_TASK", "app", "celery_config", "configure"]
