"""PREMIS 3 provenance of restored photos, as a plain dict (JSON) and as PREMIS XML rendered from it.

Archives keep provenance in PREMIS: which files exist and what proves them intact (objects with their
SHA-256), what was done to them, when and with what outcome (events), and by whom (agents). The
document is built from the rows the database already holds (``db.provenance``): no event is invented
beyond an ingestion for jobs created before ingestion events were recorded.

- Objects (``premis:file``): each original, result and colour reference used, identified by object key
  (a content-addressed original shared by two jobs is one object); the result is related to its sources
  (``derivation`` / ``has source``). A batch export adds the batch as an ``intellectualEntity``.
- Events: ingestion, fixity check, restoration (``creation`` of the result), colourization
  (``modification`` of it, unless the job was restore-only), review decisions (``validation``) and
  cancellations; event types are the Library of Congress preservation vocabulary's where one fits.
- Agents: pikfix (its version), the model (name, checkpoint SHA-256), each worker host and, for
  decisions taken through the API, the API key by its public prefix.

The XML is written from the dict, so both forms always carry the same facts.
"""

from __future__ import annotations

import mimetypes
from typing import Any

from lxml import etree

import pikfix
from db.models import (
    EVENT_CANCEL,
    EVENT_FIXITY,
    EVENT_INGESTION,
    EVENT_REVIEW,
    EVENT_STATUS,
    JOB_AWAITING_REVIEW,
    JOB_FAILED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    OUTCOME_FAILURE,
    OUTCOME_SUCCESS,
    Job,
    JobEvent,
    Reference,
)
from db.provenance import Provenance

PREMIS_NS = "http://www.loc.gov/premis/v3"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
PREMIS_VERSION = "3.0"
SCHEMA_LOCATION = f"{PREMIS_NS} http://www.loc.gov/standards/premis/v3/premis-v3-0.xsd"
LOC_VOCABULARY = "http://id.loc.gov/vocabulary/preservation/"

OBJECT_KEY_TYPE = "pikfix-object-key"
BATCH_ID_TYPE = "pikfix-batch-id"
EVENT_ID_TYPE = "pikfix-event"
AGENT_ID_TYPE = "pikfix-agent"

# Event types of the Library of Congress vocabulary (id.loc.gov/vocabulary/preservation/eventType).
INGESTION, FIXITY_CHECK, CREATION, MODIFICATION, VALIDATION = (
    "ingestion", "fixity check", "creation", "modification", "validation")
CANCELLATION = "cancellation"  # no LOC term for a job withdrawn by its owner: a local one
LOC_EVENT_TYPES = frozenset({INGESTION, FIXITY_CHECK, CREATION, MODIFICATION, VALIDATION})

# Roles of the LOC vocabularies eventRelatedAgentRole and eventRelatedObjectRole.
EXECUTING_PROGRAM, IMPLEMENTER, VALIDATOR = "executing program", "implementer", "validator"
SOURCE, OUTCOME = "source", "outcome"
RESTORED = (JOB_SUCCEEDED, JOB_AWAITING_REVIEW)


def _ident(kind: str, value: str) -> dict[str, str]:
    return {"type": kind, "value": value}


def _link(ident: dict[str, str], role: str | None) -> dict[str, Any]:
    return {"identifier": ident, "role": role}


class _Builder:
    """Collects objects (deduplicated by key), events and agents while walking the jobs."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.agents: dict[str, dict[str, Any]] = {}

    # -- objects and agents

    def file_object(self, role: str, key: str, sha256: str | None, name: str | None, size: int | None) -> dict:
        """The file stored under ``key`` (added once); returns its identifier."""
        ident = _ident(OBJECT_KEY_TYPE, key)
        if key not in self.objects:
            self.objects[key] = {
                "category": "file", "role": role, "identifier": ident, "original_name": name,
                "fixity": [{"algorithm": "SHA-256", "digest": sha256}] if sha256 else [],
                "size": size, "format": mimetypes.guess_type(key)[0] or "application/octet-stream",
                "relationships": [],
            }
        return ident

    def agent(self, value: str, name: str, kind: str, version: str | None = None, note: str | None = None) -> dict:
        ident = _ident(AGENT_ID_TYPE, value)
        self.agents.setdefault(value, {"identifier": ident, "name": name, "type": kind, "version": version,
                                       "note": note})
        return ident

    def software(self) -> dict:
        return self.agent("software:pikfix", "pikfix", "software", pikfix.__version__)

    def model(self, job: Job) -> dict | None:
        if not job.model_name:
            return None
        sha = job.checkpoint_sha256 or "unknown"
        return self.agent(f"model:{job.model_name}:{sha}", job.model_name, "software", sha,
                          f"restoration model; checkpoint SHA-256 {sha}")

    def actor(self, actor: str | None, device: str | None = None) -> dict | None:
        """A worker host, or a person acting through an API key (``api:<prefix>``)."""
        if not actor:
            return None
        if actor.startswith("api:"):
            prefix = actor.removeprefix("api:")
            return self.agent(f"api-key:{prefix}", f"API key {prefix}", "person",
                              note="the holder of the API key with this public prefix")
        return self.agent(f"host:{actor}", actor, "hardware", note=f"device {device}" if device else None)

    # -- events

    def event(self, ident: str, kind: str, at, detail: str | None, outcome: str | None,
              agents: list[dict], objects: list[dict]) -> dict[str, str]:
        event_ident = _ident(EVENT_ID_TYPE, ident)
        self.events.append({
            "identifier": event_ident, "type": kind, "date_time": at.isoformat(), "detail": detail,
            "outcome": outcome, "agents": [a for a in agents if a["identifier"]],
            "objects": [o for o in objects if o["identifier"]],
        })
        return event_ident


def _fixity_object(event: JobEvent, original: dict, result: dict | None) -> dict | None:
    """Which object a fixity event checked: its detail starts with ``original:`` or ``result:``."""
    return result if (event.detail or "").startswith("result") else original


def _restoration_detail(job: Job) -> str:
    model = f"{job.model_name} (checkpoint SHA-256 {job.checkpoint_sha256})" if job.model_name else "the model"
    grey = "" if job.colourize else "; restore-only, kept grey"
    return f"restored by {model} on {job.device or 'an unknown device'} as {job.output_format}{grey}"


def _colourization_detail(ref: Reference | None) -> str:
    if ref is None:
        return "colourized without a reference photo (the model's own colours)"
    return f"colourized from reference {ref.name} (SHA-256 {ref.sha256})"


class _JobWalk:
    """Adds one job's objects and events to the builder."""

    def __init__(self, b: _Builder, job: Job, ref: Reference | None) -> None:
        self.b, self.job, self.ref = b, job, ref
        self.original = b.file_object("original", job.input_key, job.input_sha256, job.input_name, job.input_bytes)
        self.reference = (b.file_object("reference", ref.object_key, ref.sha256, ref.name, None)
                          if ref is not None else None)
        self.result = (b.file_object("result", job.output_key, job.output_sha256, None, None)
                       if job.output_key else None)

    def programs(self) -> list[dict]:
        return [_link(self.b.software(), EXECUTING_PROGRAM), _link(self.b.model(self.job), EXECUTING_PROGRAM)]

    def walk(self, events: list[JobEvent]) -> None:
        if not any(e.kind == EVENT_INGESTION for e in events):
            self.b.event(f"job:{self.job.id}:ingestion", INGESTION, self.job.created_at,
                         f"original {self.job.input_name or self.job.input_key} received",
                         OUTCOME_SUCCESS, [_link(self.b.software(), EXECUTING_PROGRAM)], [_link(self.original, None)])
        for event in events:
            self.one(event)

    def one(self, e: JobEvent) -> None:
        ident, actor = f"job-event:{e.id}", _link(self.b.actor(e.actor or e.worker, self.job.device), None)
        if e.kind == EVENT_INGESTION:
            self.b.event(ident, INGESTION, e.at, e.detail, e.outcome or OUTCOME_SUCCESS,
                         [_link(self.b.software(), EXECUTING_PROGRAM), {**actor, "role": IMPLEMENTER}],
                         [_link(self.original, None)])
        elif e.kind == EVENT_FIXITY:
            self.b.event(ident, FIXITY_CHECK, e.at, e.detail, e.outcome,
                         [_link(self.b.software(), EXECUTING_PROGRAM), {**actor, "role": IMPLEMENTER}],
                         [_link(_fixity_object(e, self.original, self.result), None)])
        elif e.kind == EVENT_REVIEW:
            self.b.event(ident, VALIDATION, e.at, f"review: {e.detail}" if e.detail else "review", e.outcome,
                         [{**actor, "role": VALIDATOR}], [_link(self.result, None)])
        elif e.kind == EVENT_CANCEL:
            self.b.event(ident, CANCELLATION, e.at, e.detail, e.outcome, [{**actor, "role": IMPLEMENTER}],
                         [_link(self.original, None)])
        elif e.kind == EVENT_STATUS and e.from_status == JOB_RUNNING and e.to_status in (*RESTORED, JOB_FAILED):
            self.restoration(e, ident, {**actor, "role": IMPLEMENTER})

    def restoration(self, e: JobEvent, ident: str, host: dict) -> None:
        """A run that ended: the result's creation and, for a colourized one, its modification."""
        ok = e.to_status in RESTORED
        outcome_obj = [_link(self.result, OUTCOME)] if ok else []
        detail = _restoration_detail(self.job) if ok else f"restoration failed: {self.job.error_code or e.detail}"
        created = self.b.event(ident, CREATION, e.at, detail, OUTCOME_SUCCESS if ok else OUTCOME_FAILURE,
                               [*self.programs(), host], [_link(self.original, SOURCE), *outcome_obj])
        if not ok or self.result is None:
            return
        self.relate(self.original, created)
        if self.job.colourize:
            coloured = self.b.event(f"{ident}:colourization", MODIFICATION, e.at, _colourization_detail(self.ref),
                                    OUTCOME_SUCCESS, [*self.programs(), host],
                                    [_link(self.reference, SOURCE), _link(self.result, OUTCOME)])
            if self.reference is not None:
                self.relate(self.reference, coloured)

    def relate(self, source: dict, event: dict) -> None:
        """The result derives from ``source`` through ``event``."""
        rel = {"type": "derivation", "subtype": "has source", "object": source, "event": event}
        self.b.objects[self.result["value"]]["relationships"].append(rel)


def provenance_document(prov: Provenance) -> dict[str, Any]:
    """The PREMIS content of a job's or a batch's rows as a plain dict (what ``?format=json`` returns)."""
    b = _Builder()
    for job in prov.jobs:
        _JobWalk(b, job, prov.references.get(job.id)).walk(prov.events.get(job.id, []))
    objects = list(b.objects.values())
    if prov.batch is not None:
        objects.insert(0, {"category": "intellectualEntity", "role": "batch",
                           "identifier": _ident(BATCH_ID_TYPE, prov.batch.id), "original_name": prov.batch.name,
                           "fixity": [], "size": None, "format": None, "relationships": []})
    return {"version": PREMIS_VERSION, "objects": objects, "events": b.events, "agents": list(b.agents.values())}


# --------------------------------------------------------------------------- XML


def _el(parent: etree._Element, tag: str, text: Any = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{PREMIS_NS}}}{tag}", attrs)
    if text is not None:
        el.text = str(text)
    return el


def _identifier(parent: etree._Element, tag: str, ident: dict[str, str]) -> etree._Element:
    el = _el(parent, tag)
    _el(el, f"{tag}Type", ident["type"])
    _el(el, f"{tag}Value", ident["value"])
    return el


def _vocabulary(name: str) -> dict[str, str]:
    return {"authority": name, "authorityURI": LOC_VOCABULARY + name}


def _object_xml(root: etree._Element, obj: dict[str, Any]) -> None:
    el = _el(root, "object")
    el.set(f"{{{XSI_NS}}}type", f"premis:{obj['category']}")
    _identifier(el, "objectIdentifier", obj["identifier"])
    if obj["category"] == "file":
        chars = _el(el, "objectCharacteristics")
        for fix in obj["fixity"]:
            fixity = _el(chars, "fixity")
            _el(fixity, "messageDigestAlgorithm", fix["algorithm"], **_vocabulary("cryptographicHashFunctions"))
            _el(fixity, "messageDigest", fix["digest"])
        if obj["size"] is not None:
            _el(chars, "size", obj["size"])
        _el(_el(_el(chars, "format"), "formatDesignation"), "formatName", obj["format"])
    if obj["original_name"]:
        _el(el, "originalName", obj["original_name"])
    for rel in obj["relationships"]:
        r = _el(el, "relationship")
        _el(r, "relationshipType", rel["type"], **_vocabulary("relationshipType"))
        _el(r, "relationshipSubType", rel["subtype"], **_vocabulary("relationshipSubType"))
        _identifier(r, "relatedObjectIdentifier", rel["object"])
        _identifier(r, "relatedEventIdentifier", rel["event"])


def _linking(parent: etree._Element, tag: str, role_tag: str, link: dict[str, Any]) -> None:
    el = _identifier(parent, tag, link["identifier"])
    if link["role"]:
        vocabulary = "eventRelatedAgentRole" if tag == "linkingAgentIdentifier" else "eventRelatedObjectRole"
        _el(el, role_tag, link["role"], **_vocabulary(vocabulary))


def _event_xml(root: etree._Element, event: dict[str, Any]) -> None:
    el = _el(root, "event")
    _identifier(el, "eventIdentifier", event["identifier"])
    kind = event["type"]
    _el(el, "eventType", kind, **(_vocabulary("eventType") if kind in LOC_EVENT_TYPES else {"authority": "pikfix"}))
    _el(el, "eventDateTime", event["date_time"])
    if event["detail"]:
        _el(_el(el, "eventDetailInformation"), "eventDetail", event["detail"])
    if event["outcome"]:
        _el(_el(el, "eventOutcomeInformation"), "eventOutcome", event["outcome"])
    for link in event["agents"]:
        _linking(el, "linkingAgentIdentifier", "linkingAgentRole", link)
    for link in event["objects"]:
        _linking(el, "linkingObjectIdentifier", "linkingObjectRole", link)


def _agent_xml(root: etree._Element, agent: dict[str, Any]) -> None:
    el = _el(root, "agent")
    _identifier(el, "agentIdentifier", agent["identifier"])
    _el(el, "agentName", agent["name"])
    _el(el, "agentType", agent["type"], **_vocabulary("agentType"))
    if agent["version"]:
        _el(el, "agentVersion", agent["version"])
    if agent["note"]:
        _el(el, "agentNote", agent["note"])


def premis_xml(document: dict[str, Any]) -> bytes:
    """The document as PREMIS 3.0 XML (UTF-8, with its declaration), valid against the LOC schema."""
    root = etree.Element(f"{{{PREMIS_NS}}}premis", nsmap={"premis": PREMIS_NS, "xsi": XSI_NS})
    root.set("version", PREMIS_VERSION)
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    for obj in document["objects"]:
        _object_xml(root, obj)
    for event in document["events"]:
        _event_xml(root, event)
    for agent in document["agents"]:
        _agent_xml(root, agent)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


__all__ = ["PREMIS_NS", "provenance_document", "premis_xml"]
