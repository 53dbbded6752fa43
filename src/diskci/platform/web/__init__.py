"""The operator's dashboard at ``/`` (server-rendered pages, a signed session cookie) and offline API docs.

``mount_web(app, docs_url=...)`` adds both to the platform's app; ``platform.http.app`` calls it once.
"""

from __future__ import annotations

from fastapi import FastAPI

from diskci.platform.web import activity_pages, ci_pages
from diskci.platform.web.apidocs import mount_api_docs
from diskci.platform.web.pages import STATIC_DIR
from diskci.platform.web.routes import router


def mount_web(app: FastAPI, *, docs_url: str, redoc_url: str) -> None:
    """The dashboard's pages, stylesheet and script, and Swagger UI and ReDoc from installed assets."""
    from fastapi.staticfiles import StaticFiles

    app.include_router(router)
    app.include_router(ci_pages.router)
    app.include_router(activity_pages.router)
    app.mount("/static/dashboard", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    mount_api_docs(app, docs_url=docs_url, redoc_url=redoc_url)
