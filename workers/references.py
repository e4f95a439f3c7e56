"""Choosing the colour reference for a job: the user's choice, else top-1 retrieval from the tenant's
indexed corpus, else a recorded fallback.

A reference that cannot be used (not a colour photo, gone from storage, undecodable) is marked
``failed`` when a job meets it: retrieval then skips it, and a user's explicit choice of it fails the
job with ``bad_reference``. Neither ever becomes an ``internal_error``.

Each process keeps a tenant's corpus in memory as a ``ReferenceIndex``: read whole once, then at most
every ``reference_refresh_s`` seconds only the references indexed since the last read are added. References deleted or found
unusable leave the index when a query first meets them (their row is read before use anyway), so no
query ever reloads the corpus.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from db import repository as repo
from db.models import utcnow
from db.session import session_scope
from pikfix import imageio
from pikfix.errors import PikFixInputError
from pikfix.retrieval import ReferenceIndex, check_reference_colour
from storage import ObjectNotFound

log = logging.getLogger(__name__)

REFERENCE_NOT_COLOUR = "reference_not_colour"


@dataclass
class ChosenReference:
    source: str  # manual | retrieval | fallback
    reference_id: str | None = None
    name: str | None = None
    image: Any = None  # DecodedImage or None for the fallback
    score: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def candidate_rows(self) -> list[dict[str, Any]]:
        if self.candidates:
            return self.candidates
        return [
            {
                "reference_id": self.reference_id,
                "rank": 1,
                "total": self.score,
                "texture": None,
                "structure": None,
                "used": self.source != "fallback",
                "source": self.source,
            }
        ]


# Each refresh re-reads this much before the last one: an indexing transaction can commit after
# another one that stamped a later indexed_at. Re-adding a reference is idempotent.
REFRESH_OVERLAP = timedelta(seconds=30)
LOAD_CHUNK = 8192  # descriptors widened to float32 at a time while loading


@dataclass
class _TenantIndex:
    index: ReferenceIndex
    read_from: datetime | None = None  # the next refresh reads references indexed since then
    refreshed: float = float("-inf")  # time.monotonic() of the last refresh


class _IndexCache:
    """One incrementally refreshed ``ReferenceIndex`` per tenant and process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tenants: dict[str, _TenantIndex] = {}

    def get(self, runtime, tenant_id: str) -> ReferenceIndex:
        with self._lock:
            entry = self._tenants.get(tenant_id)
            if entry is None:
                entry = self._tenants[tenant_id] = _TenantIndex(runtime.extractor.new_index())
            if time.monotonic() - entry.refreshed >= runtime.settings.reference_refresh_s:
                self._refresh(runtime, tenant_id, entry)
            return entry.index

    @staticmethod
    def _refresh(runtime, tenant_id: str, entry: _TenantIndex) -> None:
        started = utcnow()
        with session_scope(runtime.database_url) as s:
            rows = repo.indexed_descriptors(s, tenant_id, since=entry.read_from)
        for start in range(0, len(rows), LOAD_CHUNK):
            chunk = rows[start : start + LOAD_CHUNK]
            entry.index.add([rid for rid, _ in chunk], np.stack([decode_descriptor(blob) for _, blob in chunk]))
        entry.read_from = started - REFRESH_OVERLAP
        entry.refreshed = time.monotonic()

    def discard(self, tenant_id: str, ref_id: str) -> None:
        """Take a reference found deleted or unusable out of the tenant's index."""
        with self._lock:
            entry = self._tenants.get(tenant_id)
            if entry is not None and ref_id in entry.index:
                entry.index.remove(ref_id)

    def clear(self) -> None:
        with self._lock:
            self._tenants.clear()


INDEX_CACHE = _IndexCache()


def encode_descriptor(descriptor: np.ndarray) -> bytes:
    """Descriptor blob for the database: float16, as the in-memory index stores it."""
    return np.asarray(descriptor, dtype=np.float16).tobytes()


def decode_descriptor(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


def _load_reference_image(runtime, ref) -> Any:
    try:
        data = runtime.store.get_bytes(ref.object_key)
    except ObjectNotFound as exc:
        raise PikFixInputError("bad_reference", f"reference {ref.id} is missing from storage") from exc
    try:
        return imageio.decode_image(data, max_pixels=runtime.settings.max_image_pixels)
    except PikFixInputError as exc:
        raise PikFixInputError("bad_reference", f"reference {ref.id} cannot be decoded: {exc.message}") from exc


def colour_problem(decoded) -> str | None:
    """Why a decoded photo cannot be a colour reference (stored as the reference's error), or ``None``.

    The same test the upload applies; here it also catches references that came in before it existed.
    """
    check = check_reference_colour(decoded.rgb)
    return None if check.is_colour else f"{REFERENCE_NOT_COLOUR}: {check.reason()}"


def _quarantine(runtime, ref_id: str, problem: str) -> None:
    """Mark a reference that cannot be used ``failed``, so retrieval stops offering it."""
    with session_scope(runtime.database_url) as s:
        repo.mark_reference_failed(s, ref_id, problem)
    log.warning("reference %s taken out of the corpus: %s", ref_id, problem)


def _usable_reference(runtime, tenant_id: str, ref_id: str) -> tuple[Any, Any] | None:
    """The reference row and its decoded photo, or ``None``: deleted meanwhile, or unusable (then quarantined)."""
    with session_scope(runtime.database_url) as s:
        ref = repo.get_reference(s, tenant_id, ref_id)
        if ref is None:  # deleted since the index was read
            return None
        s.expunge(ref)
    try:
        image = _load_reference_image(runtime, ref)
    except PikFixInputError as exc:
        _quarantine(runtime, ref.id, f"{exc.code}: {exc.message}")
        return None
    problem = colour_problem(image)
    if problem:
        _quarantine(runtime, ref.id, problem)
        return None
    return ref, image


def _manual_reference(runtime, tenant_id: str, reference_id: str | None) -> ChosenReference:
    """The user's choice; one that cannot be used fails the job with ``bad_reference``."""
    if not reference_id:
        raise PikFixInputError("bad_reference", "manual reference mode without a reference id")
    with session_scope(runtime.database_url) as s:
        ref = repo.get_reference(s, tenant_id, reference_id)
        if ref is None or ref.status == "deleted":
            raise PikFixInputError("bad_reference", f"reference {reference_id} does not exist")
        s.expunge(ref)
    image = _load_reference_image(runtime, ref)
    problem = colour_problem(image)
    if problem:
        _quarantine(runtime, ref.id, problem)
        raise PikFixInputError("bad_reference", f"reference {ref.id} ({ref.name}) cannot be used: {problem}")
    return ChosenReference("manual", ref.id, ref.name, image, score=None)


def _retrieved_reference(runtime, tenant_id: str, decoded, top_k: int) -> ChosenReference | None:
    """Top-1 retrieval over the usable corpus, or ``None`` when nothing usable is indexed.

    Candidates are tried best first; one that turns out unusable (grey, indexed before the colour
    check existed, or gone from storage) is quarantined and the next is tried, so a bad reference
    never fails a job. Each quarantine removes a reference for good, so the loop ends.
    """
    index = INDEX_CACHE.get(runtime, tenant_id)
    if not len(index):
        return None
    query = runtime.extractor.describe(decoded.rgb)
    unusable: set[str] = set()
    while candidates := index.query(query, k=top_k):
        for cand in candidates:
            found = _usable_reference(runtime, tenant_id, cand.id)
            if found is None:
                unusable.add(cand.id)
                INDEX_CACHE.discard(tenant_id, cand.id)
                continue
            ref, image = found
            rows_out = [
                {
                    "reference_id": c.id,
                    "rank": rank,
                    "total": float(c.total),
                    "texture": float(c.texture),
                    "structure": float(c.structure),
                    "used": c.id == ref.id,
                    "source": "retrieval",
                }
                for rank, c in enumerate((c for c in candidates if c.id not in unusable), start=1)
            ]
            return ChosenReference("retrieval", ref.id, ref.name, image, float(cand.total), rows_out)
    return None


def choose_reference(runtime, tenant_id: str, decoded, mode: str, reference_id: str | None, top_k: int = 5):
    if mode == "manual":
        return _manual_reference(runtime, tenant_id, reference_id)
    if mode == "auto":
        chosen = _retrieved_reference(runtime, tenant_id, decoded, top_k)
        if chosen is not None:
            return chosen
        log.info("tenant %s has no usable indexed references: grey fallback", tenant_id)
    return ChosenReference("fallback")
