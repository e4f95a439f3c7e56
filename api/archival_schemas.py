"""Response bodies of the archival routes: the PREMIS document as JSON, and a batch's fixity check.

The PREMIS JSON mirrors the XML export element for element (objects, events, agents), so a client that
does not read XML sees the same facts; both are built from one dict in ``workers.premis``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PremisIdentifier(BaseModel):
    type: str = Field(description="identifier scheme: pikfix-object-key, pikfix-batch-id, pikfix-event, pikfix-agent")
    value: str


class PremisFixity(BaseModel):
    algorithm: str = Field(description="always SHA-256")
    digest: str


class PremisRelationship(BaseModel):
    type: str = Field(description="relationshipType, e.g. derivation")
    subtype: str = Field(description="relationshipSubType, e.g. has source")
    object: PremisIdentifier = Field(description="the related object (the source)")
    event: PremisIdentifier = Field(description="the event that made the relation")


class PremisObject(BaseModel):
    category: Literal["file", "intellectualEntity"]
    role: Literal["original", "result", "reference", "batch"]
    identifier: PremisIdentifier
    original_name: str | None
    fixity: list[PremisFixity]
    size: int | None
    format: str | None = Field(description="media type of the file")
    relationships: list[PremisRelationship]


class PremisLink(BaseModel):
    identifier: PremisIdentifier
    role: str | None = Field(description="LOC eventRelatedAgentRole / eventRelatedObjectRole term")


class PremisEvent(BaseModel):
    identifier: PremisIdentifier
    type: str = Field(description="LOC eventType term (ingestion, fixity check, creation, modification, "
                                  "validation) or the local term cancellation")
    date_time: str = Field(description="ISO 8601, UTC")
    detail: str | None
    outcome: Literal["success", "failure"] | None
    agents: list[PremisLink]
    objects: list[PremisLink]


class PremisAgent(BaseModel):
    identifier: PremisIdentifier
    name: str
    type: Literal["software", "hardware", "person"]
    version: str | None = Field(description="pikfix's version, or a model's checkpoint SHA-256")
    note: str | None


class PremisDocument(BaseModel):
    """A job's or a batch's provenance (PREMIS 3.0 semantic units as JSON)."""

    version: Literal["3.0"]
    objects: list[PremisObject]
    events: list[PremisEvent]
    agents: list[PremisAgent]


class FixityFailure(BaseModel):
    job_id: str
    object: Literal["original", "result"]
    key: str = Field(description="the object key in storage")
    expected: str | None = Field(description="the SHA-256 recorded for it (none for results made before digests)")
    actual: str | None = Field(description="the SHA-256 of what storage returned; null when the object is missing")
    reason: Literal["mismatch", "missing"]


class FixityCounts(BaseModel):
    checked: int
    passed: int
    failed: int
    unrecorded: int = Field(description="objects that passed without a recorded digest to compare with")


class FixityCheckOut(BaseModel):
    """The latest fixity check of a batch."""

    id: str
    batch_id: str
    status: Literal["queued", "running", "finished"]
    requested_at: str
    started_at: str | None
    finished_at: str | None
    counts: FixityCounts
    failures: list[FixityFailure]
