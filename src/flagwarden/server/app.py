"""The ``flagwarden serve`` application: the admin API, the dashboard, ``/healthz`` and
``/metrics``, in one FastAPI app over one :class:`Service`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.concurrency import run_in_threadpool

from flagwarden import __version__
from flagwarden.config import Settings
from flagwarden.governance.state import StateStoreUnavailable
from flagwarden.server.api import api_router
from flagwarden.server.security import Guard, LoginThrottle, SecurityHeaders, Sessions
from flagwarden.server.service import Service
from flagwarden.server.ui import ui_router

__all__ = ["create_app", "serve"]


def create_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """The app for ``settings``' project (``service``: one already open)."""
    service = service or Service.open(settings)
    sessions = Sessions(settings.config.server.session_hours * 3600)
    guard = Guard(service.tokens, sessions, LoginThrottle(), service.refused)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.live.attach(asyncio.get_running_loop())
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="flagwarden admin API",
        version=__version__,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(SecurityHeaders)
    app.include_router(api_router(service, guard))
    app.include_router(ui_router(service, guard, sessions))
    app.mount("/static", StaticFiles(directory=str(files("flagwarden.server") / "static")))

    @app.get("/healthz", tags=["ops"], summary="Is the service up, can it reach its stores")
    async def healthz() -> JSONResponse:
        def check() -> dict[str, Any]:
            store = "ok"
            try:
                assert service.governance.store is not None
                service.governance.store.load_all()
            except StateStoreUnavailable as exc:
                store = f"unreachable: {exc}"
            audit = "ok" if service.governance.audit is not None else "unavailable"
            return {"status": "ok" if store == "ok" else "degraded", "state": store, "audit": audit}

        doc = await run_in_threadpool(check)
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics of this process")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the service on uvicorn until interrupted (``host``/``port`` override
    ``server:`` in the config)."""
    import uvicorn

    app = create_app(settings)
    config = settings.config.server
    uvicorn.run(
        app,
        host=host or config.host,
        port=config.port if port is None else port,
        log_config=None,  # flagwarden's structlog setup owns the log format
        access_log=False,
        timeout_graceful_shutdown=2,  # open event streams never hold a shutdown up
    )
