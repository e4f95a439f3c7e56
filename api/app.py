"""``create_app``: the FastAPI application, built from one settings object.

The same factory serves both modes. With a broker configured, tasks go to Celery; without one
(the embedded default, and the in-process tests), tasks run eagerly inside the request, so the API
works with no servers at all.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from api.deps import ApiContext
from api.errors import install_error_handlers, not_found
from api.prometheus import RequestMetricsMiddleware
from api.routers import archival, batches, health, iiif, jobs, metrics, multipart, references
from api.schemas import ErrorInfo, ErrorResponse
from api.timeouts import ReadRequestTimeout
from api.uploads import RequestSizeLimit
from pikfix import __version__
from service.settings import Settings, get_settings
from workers.runtime import WorkerRuntime, set_runtime

log = logging.getLogger(__name__)

DESCRIPTION = """Restore and colourize old photos in bulk.

Authenticate with `Authorization: Bearer <api key>` (keys are created with `pikfix keys create`).
Every error answers `{"error": {"code": "...", "message": "..."}}` with a stable `code`.
Another tenant's ids answer 404, exactly like ids that do not exist.
"""


def _configure_tasks(settings: Settings, runtime: WorkerRuntime) -> None:
    """Point the Celery app at this API's broker; in eager mode make its tasks use this runtime."""
    from workers.app import app as celery_app
    from workers.app import configure

    previous = celery_app.conf.broker_url
    configure(celery_app, settings)
    if celery_app.conf.broker_url != previous:
        # Celery caches its broker connection and producer pools on first use and never rereads the
        # URL; forget them so the next task goes to this broker (only matters when one process builds
        # apps for several brokers, as the tests do).
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
    if settings.eager:
        # Tasks executed in-process look the runtime up globally; it must be this app's.
        set_runtime(runtime)


def _install_openapi(app: FastAPI) -> None:
    """The generated spec plus the error schemas every route refers to (see ``error_responses``)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (ErrorInfo, ErrorResponse):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


DOCS_ASSETS_URL = "/docs/assets"
# Swagger UI's files from the installed swagger-ui-bundle package: /docs works on a host with no internet.
SWAGGER_UI_DIR = Path(str(swagger_ui_path))
SWAGGER_UI_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def _install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI served from this process, with no URL outside it (FastAPI's default page
    loads its script and style from a CDN, so an offline host shows a blank page)."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon-32x32.png",
            # No badge fetched from the public spec validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(DOCS_ASSETS_URL + "/{name}", include_in_schema=False)
    def swagger_ui_asset(name: str) -> FileResponse:
        media_type = SWAGGER_UI_ASSETS.get(name)
        if media_type is None:
            raise not_found("docs asset")
        return FileResponse(SWAGGER_UI_DIR / name, media_type=media_type,
                            headers={"Cache-Control": "public, max-age=86400"})


def create_app(settings: Settings | None = None, *, runtime: WorkerRuntime | None = None) -> FastAPI:
    """Build the API. ``runtime`` (store, model, retrieval extractor) is created from ``settings``
    when not given; tests pass one to share a loaded model between apps."""
    settings = settings or get_settings()
    runtime = runtime or WorkerRuntime(settings, hostname="api")
    ctx = ApiContext(settings, runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.eager:
            log.info("no broker configured: tasks run in-process (eager mode)")
        yield

    app = FastAPI(
        title="pikfix",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,  # served by _install_docs from local files
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    _configure_tasks(settings, runtime)
    install_error_handlers(app)
    for module in (jobs, batches, multipart, references, archival, iiif, health, metrics):
        app.include_router(module.router)
    _install_openapi(app)
    _install_docs(app)
    # Added last = outermost: the latency histogram also times requests refused for their size.
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(ReadRequestTimeout, seconds=settings.api_read_timeout_s)
    app.add_middleware(RequestMetricsMiddleware, observe=ctx.metrics.observe)
    return app


__all__ = ["create_app"]
