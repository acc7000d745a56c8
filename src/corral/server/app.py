"""The FastAPI application: routes, one error envelope, auth and limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral._version import __version__
from corral.config import Settings
from corral.core.network import Network
from corral.core.pools import Pools
from corral.core.sandboxes import SandboxManager
from corral.core.templates import TemplateService
from corral.errors import (
    CorralError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from corral.images.store import ImageStore
from corral.runtimes.base import Runtime
from corral.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from corral.server.routes import boot_snapshots, commands, files, images, pools, sandboxes, snapshots, templates
from corral.server.schemas import ErrorEnvelope, Health
from corral.store.db import Store

log = logging.getLogger(__name__)


def make_runtime(settings: Settings) -> Runtime:
    from corral.runtimes.oci import OciRuntime

    return OciRuntime(
        kind=settings.runtime,
        data_dir=settings.data_dir,
        binary=settings.runsc_path,
        platform=settings.runsc_platform,
        snapshot_compression=settings.snapshot_compression,
        spare_disks=settings.spare_disks,
        spare_disk_mb=settings.default_disk_mb,
        favor_cgroup_moves=settings.cgroup_favordynmods,
    )


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the API app. ``runtime`` replaces the configured one (tests)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.db_url)
        manager = SandboxManager(
            settings,
            store,
            runtime or make_runtime(settings),
            ImageStore(settings.data_dir),
            network=Network(settings, enabled=runtime is None),
        )
        await manager.start()
        app.state.manager = manager
        app.state.templates = TemplateService(manager)
        app.state.templates.start()
        app.state.pools = Pools(manager, app.state.templates)
        app.state.pools.start()
        try:
            yield
        finally:
            await app.state.pools.aclose()
            await manager.aclose()
            store.close()

    app = FastAPI(
        title="corral",
        version=__version__,
        summary="Self-hosted sandboxes for AI agents.",
        lifespan=lifespan,
        responses={"default": {"model": ErrorEnvelope, "description": "Any error"}},
    )
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(sandboxes.router)
    app.include_router(commands.router)
    app.include_router(files.router)
    app.include_router(images.router)
    app.include_router(templates.router)
    app.include_router(snapshots.router)
    app.include_router(pools.router)
    app.include_router(boot_snapshots.router)

    @app.get("/health", tags=["health"])
    async def health() -> Health:
        return Health(status="ok", version=__version__)

    app.add_middleware(
        BodyLimitMiddleware,
        json_limit=settings.max_json_body_kb * 1024,
        upload_limit=settings.max_upload_mb * 1024 * 1024,
    )
    digest = settings.api_key_digest()
    if digest:
        app.add_middleware(ApiKeyMiddleware, key_sha256=digest)
    return app


def _envelope(error: CorralError) -> JSONResponse:
    return JSONResponse(error.envelope(), status_code=error.status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> JSONResponse:
        sandbox_id = request.path_params.get("sandbox_id")
        if sandbox_id:
            exc = await request.app.state.manager.call_failed(sandbox_id, exc)
        return _envelope(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_describe(e) for e in exc.errors()]
        message = "; ".join(f"{e['where']}: {e['problem']}" for e in errors[:5]) or "invalid request"
        return _envelope(InvalidRequest(message, details={"errors": errors}))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, CorralError):
            return _envelope(exc.__cause__)
        error: CorralError
        if exc.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif exc.status_code == 413:
            error = PayloadTooLarge(str(exc.detail))
        elif exc.status_code < 500:
            error = InvalidRequest(str(exc.detail))
        else:
            error = InternalError(str(exc.detail))
        return _envelope(error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _envelope(InternalError("internal error: the server logged what went wrong"))


def _describe(error: Any) -> dict[str, Any]:
    loc = [str(p) for p in error.get("loc", ()) if p != "body"] or ["body"]
    return {
        "where": ".".join(loc),
        "problem": error.get("msg", "invalid"),
        "type": error.get("type", ""),
    }
