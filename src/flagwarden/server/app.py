"""The ``flagwarden serve`` application: the admin API, the dashboard, ``/healthz`` and
``/metrics``, in one FastAPI app over one :class:`Service`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.concurrency import run_in_threadpool

from flagwarden import __version__
from flagwarden.audit.log import AuditError
from flagwarden.config import Settings
from flagwarden.governance.state import StateStoreUnavailable
from flagwarden.server.api import api_router
from flagwarden.server.security import (
    Guard,
    LoginThrottle,
    RefusalLog,
    SecurityHeaders,
    Sessions,
    store_unavailable,
)
from flagwarden.server.service import Service
from flagwarden.server.ui import ui_router

if TYPE_CHECKING:
    import uvicorn

__all__ = ["create_app", "serve"]

DOCS_PATH = "/api/docs"
OPENAPI_PATH = "/api/openapi.json"
SWAGGER_CDN = "https://cdn.jsdelivr.net"


def _docs_page(title: str) -> tuple[bytes, str]:
    """FastAPI's Swagger UI page (its script and stylesheet from the jsDelivr CDN) and the
    Content-Security-Policy that lets exactly it run: the CDN's script, the page's own inline
    start-up script by its hash, the inline styles Swagger UI applies, requests to this
    service only; nothing else (no validator badge, no external favicon)."""
    body = bytes(
        get_swagger_ui_html(
            openapi_url=OPENAPI_PATH,
            title=title,
            swagger_favicon_url="data:,",
            swagger_ui_parameters={"validatorUrl": None},
        ).body
    )
    inline = re.findall(rb"<script>(.*?)</script>", body, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in inline
    )
    csp = (
        f"default-src 'none'; script-src {SWAGGER_CDN} {hashes}; "
        f"style-src {SWAGGER_CDN} 'unsafe-inline'; font-src {SWAGGER_CDN} data:; "
        "img-src 'self' data:; connect-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )
    return body, csp


def create_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """The app for ``settings``' project (``service``: one already open)."""
    service = service or Service.open(settings)
    sessions = Sessions(settings.config.server.session_hours * 3600)
    refusals = RefusalLog(service.refused)
    guard = Guard(service.tokens, sessions, LoginThrottle(), refusals.note)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.live.attach(asyncio.get_running_loop())
        service.start()
        refusals.start()
        try:
            yield
        finally:
            service.live.close()
            await run_in_threadpool(refusals.close)  # the counted refusals, written
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="flagwarden admin API",
        version=__version__,
        docs_url=None,  # served below, with the CSP it needs
        redoc_url=None,
        openapi_url=OPENAPI_PATH,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.refusals = refusals
    app.add_middleware(SecurityHeaders)

    async def unavailable(_: Request, exc: Exception) -> Response:
        """A store outage no route handled itself: 503, never a 500."""
        if isinstance(exc, AuditError):
            return JSONResponse({"detail": "the audit log cannot be reached: try again"}, 503)
        failure = store_unavailable(exc)
        return JSONResponse({"detail": failure.detail}, failure.status_code)

    app.add_exception_handler(StateStoreUnavailable, unavailable)
    app.add_exception_handler(AuditError, unavailable)
    app.include_router(api_router(service, guard))
    app.include_router(ui_router(service, guard, sessions))
    app.mount("/static", StaticFiles(directory=str(files("flagwarden.server") / "static")))

    docs_body, docs_csp = _docs_page(f"{app.title} - docs")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_body, headers={"Content-Security-Policy": docs_csp})

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


def _server(config: uvicorn.Config, service: Service) -> uvicorn.Server:
    """A uvicorn server that ends the open event streams as soon as it starts to stop:
    uvicorn waits for open connections before it runs the app's lifespan shutdown, so
    without this every stream would hold the shutdown up until cancelled."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            service.live.close()
            await super().shutdown(sockets)

    return Server(config)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the service on uvicorn until interrupted (``host``/``port`` override
    ``server:`` in the config)."""
    import uvicorn

    app = create_app(settings)
    config = settings.config.server
    server = _server(
        uvicorn.Config(
            app,
            host=host or config.host,
            port=config.port if port is None else port,
            log_config=None,  # flagwarden's structlog setup owns the log format
            access_log=False,
            # X-Forwarded-For/-Proto only from these proxies (uvicorn's own default would
            # believe any local process): the client address the throttle counts by.
            proxy_headers=True,
            forwarded_allow_ips=list(config.forwarded_allow_ips),
            timeout_graceful_shutdown=2,
        ),
        app.state.service,
    )
    with suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run: could not start (the port taken, say)
        raise SystemExit(3)
