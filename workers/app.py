"""The Celery application, configured from the one settings object.

Reliability settings (docs/operations.md, "6. Failure modes"): late acks with reject-on-worker-lost so a killed worker's job is
redelivered, prefetch 1 so a GPU worker never hoards photos, a Redis visibility timeout above the hard
time limit, JSON only, results ignored (the database is the source of truth). With no broker configured
the tasks run eagerly in-process (the embedded default).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from service.settings import Settings, get_settings

QUEUE_RESTORE = "restore"
QUEUE_INGEST = "ingest"
QUEUE_MAINTENANCE = "maintenance"

TASK_ROUTES = {
    "pikfix.restore_job": {"queue": QUEUE_RESTORE},
    "pikfix.index_reference": {"queue": QUEUE_INGEST},
    "pikfix.ingest_archive": {"queue": QUEUE_INGEST},
    "pikfix.batch_webhook": {"queue": QUEUE_MAINTENANCE},
    "pikfix.maintenance.*": {"queue": QUEUE_MAINTENANCE},
}


def configure(app: Celery, settings: Settings) -> None:
    hard = settings.job_hard_time_limit_s
    app.conf.update(
        broker_url=settings.broker_url or "memory://",
        task_always_eager=settings.eager,
        task_eager_propagates=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=hard,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Above the hard limit, so a running job is never handed to a second worker while alive.
            "visibility_timeout": hard + 900,
            "socket_timeout": 10,
            "socket_connect_timeout": 10,
        },
        task_default_queue=QUEUE_RESTORE,
        task_queues=[Queue(QUEUE_RESTORE), Queue(QUEUE_INGEST), Queue(QUEUE_MAINTENANCE)],
        task_routes=TASK_ROUTES,
        beat_schedule={
            "resend-stuck-jobs": {
                "task": "pikfix.maintenance.resend_stuck_jobs",
                "schedule": settings.maintenance_interval_s,
            },
            "resend-pending-archives": {
                "task": "pikfix.maintenance.resend_pending_archives",
                "schedule": settings.maintenance_interval_s,
            },
            "dispatch-queued-jobs": {
                "task": "pikfix.maintenance.dispatch_queued_jobs",
                "schedule": settings.maintenance_interval_s,
            },
            "reindex-pending-references": {
                "task": "pikfix.maintenance.reindex_pending_references",
                "schedule": settings.maintenance_interval_s * 5,
            },
            "finish-batches": {
                "task": "pikfix.maintenance.finish_batches",
                "schedule": settings.maintenance_interval_s,
            },
        },
    )


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("pikfix", include=["workers.tasks", "workers.maintenance", "workers.webhooks", "workers.fixity"])
    configure(app, settings or get_settings())
    return app


app = create_app()
