"""The on-demand fixity check against the real stack: ``pikfix api`` and ``pikfix worker`` processes, Redis,
PostgreSQL and moto's S3 server. A small batch is restored over HTTP, then one original and one result are
overwritten in S3 behind the service's back (boto3, as a failing disk or a careless operator would); the
check must list exactly those two as failed, and the batch's PREMIS export must validate against the
Library of Congress schema and carry their fixity events with outcome failure."""

from __future__ import annotations

from pathlib import Path

import boto3
import httpx
from lxml import etree
from rel_support import photo_bytes, wait_for

try:
    from fixtures.moto_service import AWS_REGION
except ModuleNotFoundError:  # pragma: no cover - tests/ imported as a package
    from tests.fixtures.moto_service import AWS_REGION

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "premis" / "premis.xsd"
NS = {"p": "http://www.loc.gov/premis/v3"}
FLOW_TIMEOUT_S = 240.0


def _restored_batch(http: httpx.Client) -> str:
    """Three distinct photos (so no two jobs share an original), all restored (no beat runs here to
    mark the batch finished; the check does not need it)."""
    batch_id = http.post("/v1/batches", json={"name": "fixity", "options": {"reference_mode": "none"}}).json()["id"]
    files = [("files", (f"scan{i}.jpg", photo_bytes(48, 40, seed=i), "image/jpeg")) for i in range(3)]
    assert http.post(f"/v1/batches/{batch_id}/photos", files=files).status_code == 201
    assert http.post(f"/v1/batches/{batch_id}/submit").status_code == 200
    wait_for(lambda: http.get(f"/v1/batches/{batch_id}").json()["progress"]["counts"]["succeeded"] == 3,
             FLOW_TIMEOUT_S, "the three jobs to succeed", interval=0.5)
    return batch_id


def _tamper(cluster, key: str) -> None:
    s3 = boto3.client("s3", endpoint_url=cluster.bucket.endpoint_url, region_name=AWS_REGION)
    s3.put_object(Bucket=cluster.bucket.bucket, Key=key, Body=b"bit rot")


def test_fixity_check_finds_tampered_objects_and_premis_records_them(cluster):
    tenant_id = cluster.new_tenant()
    cluster.start_worker()
    base_url = cluster.start_api()
    with httpx.Client(base_url=base_url, headers=cluster.api_key(tenant_id), timeout=60) as http:
        batch_id = _restored_batch(http)
        jobs = [cluster.job(j["id"]) for j in http.get(f"/v1/batches/{batch_id}/jobs").json()["items"]]
        assert all(job.output_sha256 and job.input_sha256 for job in jobs)
        bad_original, bad_result = jobs[0], jobs[1]
        _tamper(cluster, bad_original.input_key)
        _tamper(cluster, bad_result.output_key)

        started = http.post(f"/v1/batches/{batch_id}/fixity-check")
        assert started.status_code == 202, started.text
        check_id = started.json()["id"]
        check = wait_for(lambda: (c := http.get(f"/v1/batches/{batch_id}/fixity-check").json())["status"]
                         == "finished" and c["id"] == check_id and c, FLOW_TIMEOUT_S, "the fixity check", 0.5)

        assert check["counts"] == {"checked": 6, "passed": 4, "failed": 2, "unrecorded": 0}
        failed = {(f["job_id"], f["object"], f["expected"], f["reason"]) for f in check["failures"]}
        assert failed == {(bad_original.id, "original", bad_original.input_sha256, "mismatch"),
                          (bad_result.id, "result", bad_result.output_sha256, "mismatch")}

        premis = http.get(f"/v1/batches/{batch_id}/premis")
        assert premis.status_code == 200 and premis.headers["content-type"].startswith("application/xml")
    xml = etree.fromstring(premis.content)
    etree.XMLSchema(etree.parse(str(SCHEMA_PATH), etree.XMLParser(no_network=True))).assertValid(xml)
    failures = {
        ev.find("p:linkingObjectIdentifier/p:linkingObjectIdentifierValue", NS).text
        for ev in xml.iterfind("p:event", NS)
        if ev.findtext("p:eventType", namespaces=NS) == "fixity check"
        and ev.findtext("p:eventOutcomeInformation/p:eventOutcome", namespaces=NS) == "failure"
    }
    assert failures == {bad_original.input_key, bad_result.output_key}
