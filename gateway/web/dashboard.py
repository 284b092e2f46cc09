"""The live dashboard (``GET /``), its static files and a raw-EventSource example page.

The pages are plain HTML and ES modules: no build step. The JavaScript
client lives in ``gateway/web/static/pollcast.js`` so that the installed
package carries it; ``clients/js/pollcast.js`` is a link to that one file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

__all__ = ["CLIENT_JS", "DASHBOARD_ROUTES", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().with_name("static")
#: The client module served at ``/static/pollcast.js``.
CLIENT_JS = STATIC_DIR / "pollcast.js"

_JS = "text/javascript; charset=utf-8"
_STATIC_FILES: dict[str, tuple[Path, str]] = {
    "pollcast.js": (CLIENT_JS, _JS),
    "dashboard.js": (STATIC_DIR / "dashboard.js", _JS),
    "dashboard.css": (STATIC_DIR / "dashboard.css", "text/css; charset=utf-8"),
    "favicon.svg": (STATIC_DIR / "favicon.svg", "image/svg+xml"),
}
_PAGES: dict[str, Path] = {
    "dashboard": STATIC_DIR / "dashboard.html",
    "sse-example": STATIC_DIR / "sse-example.html",
}
_HTML = "text/html; charset=utf-8"


def _file_response(request: Request[Any, Any, Any], path: Path, media_type: str) -> Response[Any]:
    """The file with an ETag; ``no-cache`` so an upgraded gateway is picked up at once."""
    content = path.read_bytes()
    etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
    headers = {
        "Cache-Control": "no-cache",
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(content=None, status_code=304, headers=headers)
    return Response(content=content, media_type=media_type, headers=headers)


@get("/", include_in_schema=False)
async def dashboard_page(request: Request[Any, Any, Any]) -> Response[Any]:
    """The live dashboard; ``?tasks=a:1,b:2`` pre-fills the tasks to watch."""
    return _file_response(request, _PAGES["dashboard"], _HTML)


@get("/examples/sse", include_in_schema=False)
async def sse_example_page(request: Request[Any, Any, Any]) -> Response[Any]:
    """A minimal page following ``?task=provider:id`` with a bare ``EventSource``."""
    return _file_response(request, _PAGES["sse-example"], _HTML)


@get("/static/{name:str}", include_in_schema=False)
async def static_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
    """One of the dashboard's files; only names on the list are served."""
    try:
        path, media_type = _STATIC_FILES[name]
    except KeyError:
        raise NotFoundException(f"no static file {name[:64]!r}") from None
    return _file_response(request, path, media_type)


DASHBOARD_ROUTES = [dashboard_page, sse_example_page, static_file]
