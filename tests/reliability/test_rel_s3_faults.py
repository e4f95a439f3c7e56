"""S3 errors and timeouts injected between a real worker and moto's S3 server.

The worker's ``PIKFIX_S3_ENDPOINT_URL`` is a :class:`FaultProxy` in front of moto; the test writes the
originals and reads the results directly, so what it checks is what is really in the bucket. The
worker runs with ``PIKFIX_JOB_MAX_ATTEMPTS=3`` (the dead-letter limit; default 5) to keep the
permanent-failure case short. The store's client makes up to 3 attempts per request (botocore's
standard retry mode, whose retry quota runs dry after a few dozen failures, leaving 1 attempt); a
``StorageUnavailable`` then becomes a Celery retry after 2, 4, 8 ... seconds, and every retry's claim
counts an attempt.

Figures asserted:
- a 503 outage of every request for 5 s mid-batch: all jobs succeed, the jobs that met it took at most
  3 attempts (retries at +2 s and +6 s), and the proxy counted the 503s it answered;
- connections reset mid-download (4 GETs of originals) then mid-upload (4 PUTs of results): every job
  succeeds with a complete result (decoded at the right size), no original cut short is mistaken for
  a truncated photo, no cut upload is left as a result;
- one original that always answers 500: ``job_max_attempts`` runs of at most 3 GETs each, then
  ``failed`` with no result object, no metric rows, while the rest of its batch succeeds;
- one GET that meets a silent endpoint: the job must be done within 15 s (needs the S3 timeouts in
  the settings; today the worker's client waits its 60 s read timeout).
"""

from __future__ import annotations

import time

import pytest
from fault_proxy import Fault, FaultProxy
from rel_support import (
    RedisServer,
    batch_figures,
    make_cluster,
    poll_until,
    record_figures,
    small_photos,
    tiny_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

MAX_ATTEMPTS = 3
BOTO_ATTEMPTS = 3  # storage.S3Store's default max_attempts
TIMEOUT_S = 180.0


# Short S3 timeouts (service.settings), so a silent endpoint costs seconds, not minutes.
S3_TIMEOUTS = {"PIKFIX_S3_CONNECT_TIMEOUT_S": "2", "PIKFIX_S3_READ_TIMEOUT_S": "3"}
STALL_BUDGET_S = 15.0


class UnclearFailure(AssertionError):
    """The job failed, but its record does not say that storage was the cause."""


class StallNotBounded(AssertionError):
    """A request to a silent S3 endpoint held the job longer than the configured timeouts allow."""


@pytest.fixture(scope="module")
def s3_cluster(tmp_path_factory, postgres_admin, moto_server):
    root = tmp_path_factory.mktemp("rel-s3")
    redis = RedisServer(root / "redis").start()
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    try:
        with (
            FaultProxy(port) as proxy,
            postgres_admin.fresh_database() as url,
            make_cluster(
                root=root,
                redis=redis,
                database_url=url,
                moto_server=moto_server,
                checkpoint=tiny_checkpoint(tmp_path_factory),
                base_env={"PIKFIX_JOB_MAX_ATTEMPTS": str(MAX_ATTEMPTS), **S3_TIMEOUTS},
            ) as cluster,
        ):
            cluster.worker_s3_endpoint = proxy.endpoint_url
            cluster.start_worker(concurrency=1)
            cluster.proxy = proxy
            yield cluster
    finally:
        redis.kill()


@pytest.fixture
def cluster(s3_cluster):
    s3_cluster.proxy.clear()
    s3_cluster.proxy.reset_records()
    if not s3_cluster.workers[-1].alive():
        s3_cluster.start_worker(concurrency=1)
    yield s3_cluster
    s3_cluster.proxy.clear()


def test_503_outage_mid_batch_is_retried_and_every_job_succeeds(cluster) -> None:
    jobs = 24
    tenant = cluster.new_tenant()
    cluster.add_jobs(tenant, small_photos(jobs, distinct=6))
    cluster.dispatch()
    cluster.wait_finished(tenant, jobs, TIMEOUT_S, at_least=6)

    outage_s = 5.0
    cluster.proxy.set_fault(Fault("status", 503))
    started = time.monotonic()
    time.sleep(outage_s)
    cluster.proxy.clear()
    answered_503 = cluster.proxy.counts()["status"]
    cluster.wait_finished(tenant, jobs, TIMEOUT_S)
    recovered_s = time.monotonic() - started

    figures = batch_figures(cluster, tenant)
    record_figures(
        "s3_503_outage",
        jobs=jobs,
        outage_s=outage_s,
        requests_answered_503=answered_503,
        all_done_after_s=recovered_s,
        figures=figures,
    )
    assert figures.succeeded == jobs and figures.failed == 0, figures
    assert figures.corrupt() == 0 and figures.result_objects == jobs
    assert answered_503 >= BOTO_ATTEMPTS, "the outage must have been met by the worker"
    assert figures.retried_jobs >= 1 and figures.max_attempts <= 3, figures.attempts_histogram


def test_connection_resets_mid_transfer_never_leave_a_partial_result(cluster) -> None:
    per_phase, hits = 10, 4
    tenant = cluster.new_tenant()
    # Bigger photos than elsewhere, so a transfer is cut inside the body, not before it. Downloads of
    # originals are cut first, then uploads of results (every 2nd request, 4 times each).
    for phase, method in enumerate(("GET", "PUT")):
        cluster.add_jobs(tenant, small_photos(per_phase, side=160, distinct=5, prefix=f"p{phase}-"))
        cluster.proxy.set_fault(Fault("reset", methods={method}, every=2, limit=hits))
        cluster.dispatch()
        cluster.wait_finished(tenant, per_phase * (phase + 1), TIMEOUT_S)
    cluster.proxy.clear()

    jobs = 2 * per_phase
    figures = batch_figures(cluster, tenant, decode_results=True)
    resets = {m: cluster.proxy.counts(m)["reset"] for m in ("GET", "PUT")}
    record_figures("s3_resets", jobs=jobs, resets=resets, figures=figures)
    assert resets == {"GET": hits, "PUT": hits}
    # A download cut short must be retried, not decoded: no job may fail as a truncated photo.
    assert figures.error_codes == {} and figures.succeeded == jobs, figures
    assert figures.succeeded_without_result == 0 and figures.result_objects == jobs
    assert figures.corrupt() == 0


def test_an_original_that_always_fails_ends_failed_after_bounded_retries(cluster) -> None:
    tenant = cluster.new_tenant()
    photos = small_photos(4, distinct=4)
    _, ids = cluster.add_jobs(tenant, photos)
    doomed = cluster.job(ids[0]).input_key
    cluster.proxy.set_fault(Fault("status", 500, methods={"GET"}, path_contains=doomed))
    cluster.dispatch()
    started = time.monotonic()
    cluster.wait_finished(tenant, len(ids), TIMEOUT_S)
    elapsed = time.monotonic() - started

    job = cluster.job(ids[0])
    gets = cluster.proxy.counts("GET", path_contains=doomed)
    figures = batch_figures(cluster, tenant)
    record_figures(
        "s3_permanent_500",
        gets_answered_500=gets["status"],
        attempts=job.attempts,
        error_code=job.error_code,
        error_message=job.error_message,
        failed_after_s=elapsed,
        figures=figures,
    )
    assert job.status == "failed" and job.output_key is None
    # Bounded: every attempt the dead-letter limit allows, each with at most the client's own 3 tries.
    assert job.attempts == MAX_ATTEMPTS and set(gets) == {"status"}
    assert MAX_ATTEMPTS <= gets["status"] <= MAX_ATTEMPTS * BOTO_ATTEMPTS
    assert not cluster.store.list_keys(f"{tenant}/results/{job.id}/")
    assert figures.succeeded == len(ids) - 1 and figures.corrupt() == 0
    if job.error_code != "transient_error_exhausted" or "500" not in (job.error_message or ""):
        raise UnclearFailure(f"failed as {job.error_code}: {job.error_message!r}; the storage error is not recorded")


def test_a_silent_s3_request_is_abandoned_within_the_read_timeout(cluster) -> None:
    tenant = cluster.new_tenant()
    _, (job_id,) = cluster.add_jobs(tenant, small_photos(1))
    cluster.proxy.set_fault(Fault("stall", methods={"GET"}, nth=1, stall_s=120))  # the first GET only
    cluster.dispatch()
    started = time.monotonic()
    done = poll_until(lambda: cluster.job(job_id).status in ("succeeded", "failed"), STALL_BUDGET_S, 0.25)
    waited = time.monotonic() - started
    cluster.proxy.clear()  # ends the stall: the held connection closes and the client retries
    cluster.wait_finished(tenant, 1, TIMEOUT_S)
    job = cluster.job(job_id)
    record_figures("s3_silent_request", finished_within_budget=bool(done), waited_s=waited, status=job.status)
    assert cluster.proxy.counts("GET")["stall"] == 1
    if not done:
        raise StallNotBounded(f"the job was still {cluster.job(job_id).status} {waited:.0f}s into a one-request stall")
    # The client retries the timed-out GET itself, or (its retry quota spent) the task retries once.
    assert job.status == "succeeded" and job.attempts <= 2
