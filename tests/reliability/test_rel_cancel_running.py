"""Cancel racing a running job, on the real stack: a ``pikfix worker`` is SIGSTOPped mid-job, the job is
cancelled over HTTP while the worker holds it, and when the worker wakes up it stops at its next safe
point: the job ends ``cancelled`` with no result stored or recorded, and the worker goes on to the next."""

from __future__ import annotations

import signal

import httpx
import pytest
from helpers import photo_bytes
from rel_support import wait_for

from db import repository as repo
from db.session import session_scope

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_cancel_while_running_stops_at_a_safe_point_and_leaves_no_result(cluster) -> None:
    victim = cluster.start_worker(concurrency=1, queues="restore")
    cluster.start_worker(concurrency=1, queues="maintenance")  # runs the dispatch
    tenant = cluster.new_tenant()
    # Big enough that the tiny model takes a few seconds: the stop lands mid-job.
    _, (slow, after) = cluster.add_jobs(tenant, [("large.jpg", photo_bytes(2400, 2000, seed=7)),
                                                 ("small.jpg", photo_bytes(64, 48, seed=8))])
    cluster.dispatch()
    wait_for(lambda: cluster.job(slow).status == "running", 120, "the large job to start")
    victim.send_signal(signal.SIGSTOP)

    api = cluster.start_api()
    with httpx.Client(base_url=api, headers=cluster.api_key(tenant), timeout=60) as http:
        r = http.post(f"/v1/jobs/{slow}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["stopping"] is True and r.json()["job"]["status"] == "running"
        assert http.post(f"/v1/jobs/{slow}/cancel").json()["stopping"] is True  # asking twice is harmless
        victim.send_signal(signal.SIGCONT)
        wait_for(lambda: cluster.job(slow).status == "cancelled", 180, "the worker to stop at a safe point")
        wait_for(lambda: cluster.job(after).status == "succeeded", 180, "the worker to run the next job")
        job = http.get(f"/v1/jobs/{slow}").json()
        assert job["result_url"] is None and job["output_sha256"] is None
        r = http.post(f"/v1/jobs/{after}/cancel")
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_cancellable", r.text
        assert http.get(f"/v1/jobs/{slow}/result").json()["error"]["code"] == "job_not_finished"

    assert cluster.job(slow).output_key is None
    assert not list(cluster.store.list_keys(f"{tenant}/results/{slow}"))
    with session_scope(cluster.database_url, readonly=True) as s:
        cancels = [(e.to_status, e.actor) for e in repo.job_events(s, slow, kinds=("cancel",))]
        statuses = [(e.from_status, e.to_status) for e in repo.job_events(s, slow)]
    assert cancels[0][0] == "running" and cancels[0][1].startswith("api:")  # asked for by a person
    assert cancels[-1][0] == "cancelled" and not cancels[-1][1].startswith("api:")  # done by the worker
    assert statuses[-1] == ("running", "cancelled") and ("running", "succeeded") not in statuses
