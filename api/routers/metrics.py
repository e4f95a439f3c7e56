"""``GET /metrics``: Prometheus text format (see ``api.prometheus`` for what is exported and how)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.deps import ApiContext, get_context
from api.prometheus import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def metrics(ctx: ApiContext = Depends(get_context)) -> Response:
    body = await run_in_threadpool(ctx.metrics.render)
    return Response(content=body, media_type=CONTENT_TYPE)
