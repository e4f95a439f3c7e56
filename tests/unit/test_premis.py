"""PREMIS 3 export built from rows written to a real database (SQLite and PostgreSQL), validated against
the Library of Congress schema shipped in tests/fixtures/premis; a broken document must fail it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

import pikfix
from api.archival_schemas import PremisDocument
from db import migrate
from db import repository as repo
from db.provenance import batch_provenance, job_provenance
from db.session import dispose_engine, session_scope
from workers.premis import PREMIS_NS, premis_xml, provenance_document

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "premis" / "premis.xsd"
NS = {"p": PREMIS_NS}
CHECKPOINT = "c" * 64
SHA = {name: f"{i:x}" * 64 for i, name in enumerate(("orig1", "orig2", "orig3", "res1", "res2", "ref"), start=1)}


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    """The LOC PREMIS 3.0 schema, loaded with the network off: it must import nothing from outside."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(SCHEMA_PATH), parser))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest):
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate.upgrade(url)
    yield url
    dispose_engine(url)


@dataclass
class Rows:
    tenant_id: str
    other_tenant_id: str
    batch_id: str
    coloured: str  # succeeded, colourized from a reference, one fixity check passed and one failed
    grey: str  # restore-only, awaiting review then approved through the API
    failed: str  # its run failed
    cancelled: str  # cancelled before it ran


def _run(s, job_id: str, worker: str, **done) -> None:
    claim = repo.claim_job(s, job_id, worker, max_attempts=3)
    assert claim.claimed
    assert repo.complete_job(s, job_id, claim.attempt, f"t/results/{job_id}/restored.png", model_name="pikfix-tiny",
                             checkpoint_sha256=CHECKPOINT, device="cpu", worker=worker, **done)


@pytest.fixture
def rows(url: str) -> Rows:
    with session_scope(url) as s:
        tenant = repo.create_tenant(s, "bureau")
        other = repo.create_tenant(s, "elsewhere")
        ref = repo.add_reference(s, tenant.id, "harbour.jpg", f"{tenant.id}/references/{SHA['ref']}.jpg", SHA["ref"])
        batch = repo.create_batch(s, tenant.id, "album", {"reference_mode": "auto"})
        key = f"{tenant.id}/originals/{{}}.jpg"
        coloured = repo.create_job(s, tenant.id, batch.id, key.format(SHA["orig1"]), SHA["orig1"], "a.jpg", 1234)
        grey = repo.create_job(s, tenant.id, batch.id, key.format(SHA["orig2"]), SHA["orig2"], "b.jpg", 2345,
                               {"colourize": False, "reference_mode": "none"})
        failed = repo.create_job(s, tenant.id, batch.id, key.format(SHA["orig3"]), SHA["orig3"], "c.jpg", 3456)
        cancelled = repo.create_job(s, tenant.id, batch.id, key.format(SHA["orig1"]), SHA["orig1"], "a2.jpg", 1234)
        repo.submit_batch(s, tenant.id, batch.id)
        ids = (coloured.id, grey.id, failed.id, cancelled.id)
    with session_scope(url) as s:
        _run(s, ids[0], "gpu-1@scanner", output_sha256=SHA["res1"],
             references=[{"reference_id": ref.id, "rank": 0, "total": 0.9, "used": True, "source": "retrieval"}])
        _run(s, ids[1], "gpu-2@scanner", output_sha256=SHA["res2"], needs_review=True)
        claim = repo.claim_job(s, ids[2], "gpu-1@scanner", max_attempts=3)
        repo.fail_job(s, ids[2], claim.attempt, "corrupt_image", "the pixel data is damaged", worker="gpu-1@scanner")
        repo.cancel_job(s, tenant.id, ids[3], actor="api:abc123")
    with session_scope(url) as s:
        repo.decide_review(s, tenant.id, ids[1], "approve", note="tones look right", actor="api:abc123")
        repo.record_fixity(s, ids[0], "original", SHA["orig1"], SHA["orig1"], actor="fixity@host")
        repo.record_fixity(s, ids[0], "result", SHA["res1"], "0" * 64, actor="fixity@host")
    return Rows(tenant.id, other.id, batch.id, *ids)


def _batch_doc(url: str, rows: Rows) -> dict:
    with session_scope(url, readonly=True) as s:
        return provenance_document(batch_provenance(s, rows.tenant_id, rows.batch_id))


def test_batch_export_validates_against_the_loc_schema(url, rows, schema):
    doc = _batch_doc(url, rows)
    xml = etree.fromstring(premis_xml(doc))
    schema.assertValid(xml)
    assert xml.get("version") == "3.0"
    # The shared original (two jobs of the same scan) is one object; the batch is an intellectual entity.
    files = xml.findall("p:object", NS)
    kinds = [o.get("{http://www.w3.org/2001/XMLSchema-instance}type") for o in files]
    assert kinds.count("premis:file") == 6 and kinds.count("premis:intellectualEntity") == 1
    digests = {d.text for d in xml.iterfind(".//p:fixity/p:messageDigest", NS)}
    assert {SHA["orig1"], SHA["orig2"], SHA["orig3"], SHA["res1"], SHA["res2"], SHA["ref"]} == digests
    assert {a.text for a in xml.iterfind(".//p:messageDigestAlgorithm", NS)} == {"SHA-256"}


def test_events_cover_ingestion_fixity_restoration_colourization_review_cancel(url, rows):
    doc = _batch_doc(url, rows)
    types = [e["type"] for e in doc["events"]]
    assert types.count("ingestion") == 4
    assert types.count("creation") == 3  # two results made, one run failed
    assert types.count("modification") == 1  # only the colourized job; the restore-only one stayed grey
    assert types.count("validation") == 1 and types.count("cancellation") == 1
    fixity = [e for e in doc["events"] if e["type"] == "fixity check"]
    assert [e["outcome"] for e in fixity] == ["success", "failure"]
    assert fixity[1]["objects"][0]["identifier"]["value"].endswith(f"{rows.coloured}/restored.png")
    failed_run = next(e for e in doc["events"] if e["type"] == "creation" and e["outcome"] == "failure")
    assert "corrupt_image" in failed_run["detail"]
    review = next(e for e in doc["events"] if e["type"] == "validation")
    assert review["outcome"] == "success" and "tones look right" in review["detail"]
    assert review["agents"][0]["identifier"]["value"] == "api-key:abc123"


def test_result_is_derived_from_its_original_and_reference(url, rows):
    doc = _batch_doc(url, rows)
    result = next(o for o in doc["objects"] if o["identifier"]["value"].endswith(f"{rows.coloured}/restored.png"))
    sources = {r["object"]["value"] for r in result["relationships"]}
    assert sources == {f"{rows.tenant_id}/originals/{SHA['orig1']}.jpg", f"{rows.tenant_id}/references/{SHA['ref']}.jpg"}
    assert {(r["type"], r["subtype"]) for r in result["relationships"]} == {("derivation", "has source")}
    grey = next(o for o in doc["objects"] if o["identifier"]["value"].endswith(f"{rows.grey}/restored.png"))
    assert [r["object"]["value"] for r in grey["relationships"]] == [f"{rows.tenant_id}/originals/{SHA['orig2']}.jpg"]
    assert result["format"] == "image/png" and grey["fixity"] == [{"algorithm": "SHA-256", "digest": SHA["res2"]}]


def test_agents_name_software_model_hosts_and_api_key(url, rows):
    agents = {a["identifier"]["value"]: a for a in _batch_doc(url, rows)["agents"]}
    assert agents["software:pikfix"]["version"] == pikfix.__version__
    model = agents[f"model:pikfix-tiny:{CHECKPOINT}"]
    assert model["type"] == "software" and model["version"] == CHECKPOINT
    assert {"host:gpu-1@scanner", "host:gpu-2@scanner", "host:fixity@host"} <= set(agents)
    assert agents["api-key:abc123"]["type"] == "person"


def test_job_export_is_scoped_by_tenant_and_validates(url, rows, schema):
    with session_scope(url, readonly=True) as s:
        assert job_provenance(s, rows.other_tenant_id, rows.coloured) is None
        assert batch_provenance(s, rows.other_tenant_id, rows.batch_id) is None
        doc = provenance_document(job_provenance(s, rows.tenant_id, rows.coloured))
    schema.assertValid(etree.fromstring(premis_xml(doc)))
    assert {o["role"] for o in doc["objects"]} == {"original", "result", "reference"}
    assert PremisDocument.model_validate(doc).version == "3.0"  # the JSON form matches its published schema


def test_validation_bites_on_a_broken_document(url, rows, schema):
    """Proof the schema is really applied: documents missing a required part are refused."""
    doc = _batch_doc(url, rows)
    no_format = copy.deepcopy(doc)
    next(o for o in no_format["objects"] if o["category"] == "file")["format"] = None
    xml = etree.fromstring(premis_xml(no_format).replace(b"<premis:formatName/>", b""))
    assert not schema.validate(xml)
    wrong_version = etree.fromstring(premis_xml(doc))
    wrong_version.set("version", "2.2")
    assert not schema.validate(wrong_version)
    no_objects = {**doc, "objects": []}
    assert not schema.validate(etree.fromstring(premis_xml(no_objects)))
