"""Multipart presigned uploads for files too large for one PUT (S3 storage only)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/batches", tags=["batches"])
