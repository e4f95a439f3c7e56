"""IIIF Presentation 3 manifests of a batch: one canvas per photo, original and restored as a Choice."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/batches", tags=["iiif"])
