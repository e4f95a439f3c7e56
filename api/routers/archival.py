"""Archival integrity: PREMIS 3 provenance export and on-demand fixity checks of stored objects."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["archival"])
