"""PREMIS export and the fixity check over HTTP, in-process (embedded mode: SQLite, local storage, tasks run
eagerly in the request): formats, tenant scoping, errors, and a tampered file found by the check."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import jpeg_bytes, png_bytes
from lxml import etree

from db import repository as repo
from db.session import session_scope

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "premis" / "premis.xsd"
NS = {"p": "http://www.loc.gov/premis/v3"}


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA_PATH), etree.XMLParser(no_network=True)))


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"]


@pytest.fixture
def batch(api) -> dict:
    """A batch of two photos, restored in the request (eager mode)."""
    b = api.client.post("/v1/batches", headers=api.a, json={"name": "album", "options": {"reference_mode": "none"}})
    assert b.status_code == 201, b.text
    files = [("files", ("a.png", png_bytes(seed=1), "image/png")), ("files", ("b.jpg", jpeg_bytes(), "image/jpeg"))]
    r = api.client.post(f"/v1/batches/{b.json()['id']}/photos", headers=api.a, files=files)
    assert r.status_code == 201, r.text
    assert [j["status"] for j in r.json()["jobs"]] == ["succeeded", "succeeded"]
    return {"id": b.json()["id"], "jobs": [j["id"] for j in r.json()["jobs"]]}


def test_batch_premis_is_valid_xml_by_default_and_json_on_request(api, batch, schema):
    r = api.client.get(f"/v1/batches/{batch['id']}/premis", headers=api.a)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    xml = etree.fromstring(r.content)
    schema.assertValid(xml)
    assert {e.text for e in xml.iterfind(".//p:eventType", NS)} >= {"ingestion", "creation", "modification"}
    as_json = api.client.get(f"/v1/batches/{batch['id']}/premis?format=json", headers=api.a)
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    by_accept = api.client.get(f"/v1/batches/{batch['id']}/premis", headers={**api.a, "Accept": "application/json"})
    assert by_accept.json() == as_json.json()
    doc = as_json.json()
    assert doc["version"] == "3.0" and {o["role"] for o in doc["objects"]} == {"batch", "original", "result"}
    assert len(xml.findall("p:event", NS)) == len(doc["events"])  # one content, two spellings


def test_job_premis_and_errors(api, batch, schema):
    job_id = batch["jobs"][0]
    r = api.client.get(f"/v1/jobs/{job_id}/premis", headers=api.a)
    assert r.status_code == 200, r.text
    schema.assertValid(etree.fromstring(r.content))
    assert f'filename="job-{job_id}.premis.xml"' in r.headers["content-disposition"]
    assert error_of(api.client.get(f"/v1/jobs/{job_id}/premis", headers=api.b)) == (404, "not_found")
    assert error_of(api.client.get(f"/v1/batches/{batch['id']}/premis", headers=api.b)) == (404, "not_found")
    assert error_of(api.client.get("/v1/jobs/not-an-id/premis", headers=api.a)) == (404, "not_found")
    assert error_of(api.client.get(f"/v1/jobs/{job_id}/premis?format=csv", headers=api.a)) == (422, "validation_error")
    assert error_of(api.client.get(f"/v1/jobs/{job_id}/premis")) == (401, "unauthorized")


def test_fixity_check_runs_in_the_request_and_finds_a_tampered_result(api, batch):
    url = f"/v1/batches/{batch['id']}/fixity-check"
    assert error_of(api.client.get(url, headers=api.a)) == (404, "not_found")  # never checked
    first = api.client.post(url, headers=api.a)
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "finished" and body["failures"] == []
    assert body["counts"] == {"checked": 4, "passed": 4, "failed": 0, "unrecorded": 0}

    with session_scope(api.database_url, readonly=True) as s:
        job = repo.get_job(s, api.tenant_a, batch["jobs"][1])
        result_key, recorded = job.output_key, job.output_sha256
    api.store.put_bytes(result_key, b"not the restored photo")
    second = api.client.post(url, headers=api.a).json()
    assert second["id"] != body["id"] and second["counts"]["failed"] == 1
    [failure] = second["failures"]
    assert failure == {"job_id": batch["jobs"][1], "object": "result", "key": result_key, "expected": recorded,
                       "actual": failure["actual"], "reason": "mismatch"}
    assert api.client.get(url, headers=api.a).json() == second

    events = api.client.get(f"/v1/jobs/{batch['jobs'][1]}/premis?format=json", headers=api.a).json()["events"]
    assert [e["outcome"] for e in events if e["type"] == "fixity check"][-2:] == ["success", "failure"]
    assert error_of(api.client.post(url, headers=api.b)) == (404, "not_found")
    assert error_of(api.client.get(url, headers=api.b)) == (404, "not_found")
