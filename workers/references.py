"""Choosing the colour reference for a job: the user's choice, else top-1 retrieval from the tenant's
indexed corpus, else a recorded fallback.

The tenant's descriptors are read from the database and kept as an in-memory ``ReferenceIndex`` per
process, rebuilt only when the set of indexed references changes, so a query scores the whole corpus
in one vectorised pass.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from db import repository as repo
from db.session import session_scope
from pikfix import imageio
from pikfix.errors import PikFixInputError
from pikfix.retrieval import Candidate, ReferenceIndex
from pikfix.storage import ObjectNotFound

log = logging.getLogger(__name__)


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


class _IndexCache:
    """One ``ReferenceIndex`` per tenant, keyed by a fingerprint of the indexed reference ids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: dict[str, tuple[str, ReferenceIndex]] = {}

    def get(self, tenant_id: str, rows: list[tuple[str, bytes]], extractor) -> ReferenceIndex:
        fingerprint = hashlib.sha256("\n".join(sorted(rid for rid, _ in rows)).encode()).hexdigest()
        with self._lock:
            cached = self._indexes.get(tenant_id)
            if cached and cached[0] == fingerprint:
                return cached[1]
        index = extractor.new_index()
        index.add([rid for rid, _ in rows], np.stack([decode_descriptor(blob) for _, blob in rows]))
        with self._lock:
            self._indexes[tenant_id] = (fingerprint, index)
        return index


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


def choose_reference(runtime, tenant_id: str, decoded, mode: str, reference_id: str | None, top_k: int = 5):
    if mode == "manual":
        if not reference_id:
            raise PikFixInputError("bad_reference", "manual reference mode without a reference id")
        with session_scope(runtime.database_url) as s:
            ref = repo.get_reference(s, tenant_id, reference_id)
            if ref is None or ref.status == "deleted":
                raise PikFixInputError("bad_reference", f"reference {reference_id} does not exist")
            s.expunge(ref)
        image = _load_reference_image(runtime, ref)
        return ChosenReference("manual", ref.id, ref.name, image, score=None)

    if mode == "auto":
        with session_scope(runtime.database_url) as s:
            rows = repo.indexed_descriptors(s, tenant_id)
        if rows:
            index = INDEX_CACHE.get(tenant_id, rows, runtime.extractor)
            query = runtime.extractor.describe(decoded.rgb)
            candidates: list[Candidate] = index.query(query, k=top_k)
            best = candidates[0]
            with session_scope(runtime.database_url) as s:
                ref = repo.get_reference(s, tenant_id, best.id)
                s.expunge(ref)
            image = _load_reference_image(runtime, ref)
            rows_out = [
                {
                    "reference_id": c.id,
                    "rank": c.rank,
                    "total": float(c.total),
                    "texture": float(c.texture),
                    "structure": float(c.structure),
                    "used": c.rank == 1,
                    "source": "retrieval",
                }
                for c in candidates
            ]
            return ChosenReference("retrieval", ref.id, ref.name, image, float(best.total), rows_out)
        log.info("tenant %s has no indexed references: grey fallback", tenant_id)

    return ChosenReference("fallback")
