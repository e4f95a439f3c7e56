"""The plain cluster most reliability tests run against: a private redis-server, a fresh PostgreSQL
database, a fresh moto bucket and the tiny checkpoint, all stopped after the test. Modules that need
faults in front of a service (a proxy, a private PostgreSQL) or other settings define their own."""

from __future__ import annotations

import pytest
from rel_support import make_cluster, tiny_checkpoint


@pytest.fixture
def cluster(tmp_path, tmp_path_factory, fresh_redis_server, postgres_url, moto_server):
    with make_cluster(
        root=tmp_path,
        redis=fresh_redis_server,
        database_url=postgres_url,
        moto_server=moto_server,
        checkpoint=tiny_checkpoint(tmp_path_factory),
    ) as c:
        yield c
