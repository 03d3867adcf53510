"""``flagwarden serve``: the admin API and the web dashboard (extra ``[server]``).

:func:`create_app` builds the FastAPI application for a project; :func:`serve` runs it on
uvicorn. See docs/server.md.
"""

from __future__ import annotations

from flagwarden.server.app import create_app, serve

__all__ = ["create_app", "serve"]
