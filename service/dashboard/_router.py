"""Routes of the dashboard: the page at `/` and at its deep links, and its static files.

Deep links (`/analyses/{id}`) answer the same HTML; the page's router reads the path. Static files
are looked up by name inside the package's `static/` folder only, never by a path the client builds.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
_INDEX = STATIC_DIR / "index.html"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html",
          ".txt": "text/plain"}
# Revalidated on every load (ETag / Last-Modified from FileResponse): a new release is never hidden
# behind a stale cache, and an unchanged file costs one 304.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _page() -> FileResponse:
    return FileResponse(_INDEX, media_type="text/html", headers=_HEADERS)


@router.get("/")
def index() -> FileResponse:
    return _page()


@router.get("/analyses")
def analyses_page() -> RedirectResponse:
    return RedirectResponse("/", status_code=307)


@router.get("/analyses/{analysis_id}")
def analysis_page(analysis_id: str) -> FileResponse:
    return _page()


@router.get("/dashboard/static/{name:path}")
def static_file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if not path.is_file() or STATIC_DIR.resolve() not in path.parents or path.suffix not in _TYPES:
        raise NotFound("static file", name)
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)
