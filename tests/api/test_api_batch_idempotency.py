"""``POST /v1/batches`` with an ``Idempotency-Key``: a resent request answers the batch its first try made.

On SQLite in-process, and on PostgreSQL where two requests really race: many at once over HTTP, and the
exact interleaving (a second insert waiting on the first's uncommitted row) driven by hand.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pg_harness import postgres_s3_api
from sqlalchemy import func, select

from db import repository as repo
from db.models import Batch, IdempotencyKeyReused
from db.session import session_scope

BODY = {"name": "album 1921", "options": {"reference_mode": "none", "output_format": "tiff16"}}


def _batches(url: str, tenant_id: str) -> int:
    with session_scope(url, readonly=True) as s:
        return s.scalar(select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant_id))


def test_a_repeated_key_answers_the_same_batch(api):
    headers = {**api.a, "Idempotency-Key": "order-77/album-1"}
    first = api.client.post("/v1/batches", json=BODY, headers=headers)
    again = api.client.post("/v1/batches", json=BODY, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["options"] == first.json()["options"]
    assert _batches(api.database_url, api.tenant_a) == 1


def test_a_key_reused_for_another_body_is_refused(api):
    headers = {**api.a, "Idempotency-Key": "k-1"}
    assert api.client.post("/v1/batches", json=BODY, headers=headers).status_code == 201
    for other in ({**BODY, "name": "album 1922"}, {**BODY, "options": {"reference_mode": "none", "mark": True}}):
        r = api.client.post("/v1/batches", json=other, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "idempotency_key_reused"
        assert "k-1" in r.json()["error"]["message"]
    assert _batches(api.database_url, api.tenant_a) == 1


def test_keys_belong_to_their_tenant_and_no_key_means_a_new_batch(api):
    key = {"Idempotency-Key": "shared"}
    a = api.client.post("/v1/batches", json=BODY, headers={**api.a, **key})
    b = api.client.post("/v1/batches", json=BODY, headers={**api.b, **key})
    assert (a.status_code, b.status_code) == (201, 201) and a.json()["id"] != b.json()["id"]
    plain = [api.client.post("/v1/batches", json=BODY, headers=api.a) for _ in range(2)]
    assert [r.status_code for r in plain] == [201, 201] and plain[0].json()["id"] != plain[1].json()["id"]


@pytest.mark.parametrize("bad", ["", "x" * 129, "with space", "naïve"])
def test_a_malformed_key_is_a_validation_error(api, bad):
    r = api.client.post("/v1/batches", json=BODY, headers={**api.a, "Idempotency-Key": bad.encode("utf-8")})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"


@pytest.mark.integration
def test_concurrent_requests_with_one_key_make_one_batch_on_postgres(tmp_path, shared_models, postgres_url,
                                                                       s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket) as api:
        start = threading.Barrier(8)

        def post(_: int):
            start.wait()
            return api.client.post("/v1/batches", json=BODY, headers={**api.a, "Idempotency-Key": "race"})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        assert sorted(r.status_code for r in answers) == [200] * 7 + [201], [r.text for r in answers]
        assert len({r.json()["id"] for r in answers}) == 1
        assert _batches(postgres_url, api.tenant_a) == 1


@pytest.mark.integration
def test_the_losing_insert_reads_the_winners_batch_on_postgres(postgres_url):
    """The second request passed its look-up before the first committed: its insert waits on the unique
    index, fails once the first commits, and it answers the first's batch."""
    from db.migrate import upgrade

    upgrade(postgres_url)
    with session_scope(postgres_url) as s:
        tenant_id = repo.create_tenant(s, "bureau").id
    outcome: dict[str, object] = {}
    with session_scope(postgres_url) as first:
        winner, created = repo.create_batch_once(first, tenant_id, "k", "album", {"reference_mode": "none"})
        assert created

        def second() -> None:
            with session_scope(postgres_url) as s:
                batch, made = repo.create_batch_once(s, tenant_id, "k", "album", {"reference_mode": "none"})
                outcome.update(id=batch.id, created=made)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), "the second insert should wait for the first transaction"
    thread.join(timeout=30)
    assert outcome == {"id": winner.id, "created": False}
    with session_scope(postgres_url) as s, pytest.raises(IdempotencyKeyReused):
        repo.create_batch_once(s, tenant_id, "k", "another album", {"reference_mode": "none"})
