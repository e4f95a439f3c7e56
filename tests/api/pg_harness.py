"""The in-process API over the real parts: a fresh PostgreSQL database and a bucket on moto's S3 server.

SQLite keeps text PostgreSQL refuses (the NUL character) and a local folder has no presigned URLs, so
what the production stack answers is checked here. Tasks still run eagerly unless a broker is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import ApiHarness, make_runtime, make_settings, tenant_with_key
from fastapi.testclient import TestClient

from db.migrate import upgrade
from db.session import dispose_engine


def s3_settings(s3_bucket) -> dict[str, str]:
    env = s3_bucket.env
    return {
        "storage_url": env["PIKFIX_STORAGE_URL"],
        "s3_endpoint_url": env["PIKFIX_S3_ENDPOINT_URL"],
        "s3_region": env["PIKFIX_S3_REGION"],
        "s3_access_key_id": env["PIKFIX_S3_ACCESS_KEY_ID"],
        "s3_secret_access_key": env["PIKFIX_S3_SECRET_ACCESS_KEY"],
    }


@contextmanager
def postgres_s3_api(tmp_path: Path, shared_models, postgres_url: str, s3_bucket, **overrides) -> Iterator[ApiHarness]:
    """Like the ``api`` fixture, with PostgreSQL as the database and S3 as the object store."""
    from api.app import create_app
    from workers.app import app as celery_app
    from workers.app import configure
    from workers.runtime import set_runtime

    settings = make_settings(tmp_path, shared_models.checkpoint,
                             **{"database_url": postgres_url, **s3_settings(s3_bucket), **overrides})
    upgrade(postgres_url)
    tenant_a, key_a = tenant_with_key(postgres_url, "bureau-a")
    tenant_b, key_b = tenant_with_key(postgres_url, "bureau-b")
    app = create_app(settings, runtime=make_runtime(settings, shared_models))
    try:
        with TestClient(app) as client:
            yield ApiHarness(client, settings, app, tenant_a, tenant_b, key_a, key_b)
    finally:
        set_runtime(None)
        dispose_engine(postgres_url)
        configure(celery_app, make_settings(tmp_path, shared_models.checkpoint))  # back to eager tasks
