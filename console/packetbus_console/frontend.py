"""The console's browser front end: the bundle `scripts/build_console.py` builds from
console/web into ``static/`` (committed, so ``pip install`` alone gives a working console).

- ``GET /assets/<name>``: a bundle file (names carry a content hash), with
  ``Cache-Control: public, max-age=31536000, immutable`` (`ASSET_CACHE`); a missing
  one is 404.
- ``GET /`` and any other GET or HEAD path that no route serves, outside ``/api/`` and
  ``/assets/`` (the page's own routes: ``/agents``, ``/custody``...): ``index.html``
  with ``Cache-Control: no-cache``, so a new bundle is picked up at once. Under
  ``/api/`` an unknown path stays a 404 (``{"error", "code": "NOT_FOUND"}``) and a
  known path with the wrong method a 405: the API is unchanged.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from .errors import error_response

STATIC = Path(__file__).resolve().parent / "static"
ASSET_CACHE = "public, max-age=31536000, immutable"  # hashed names never change content


class _Assets(StaticFiles):
    """StaticFiles whose answers may be cached for a year (their names are hashes)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = ASSET_CACHE
        return response


def routes() -> list[BaseRoute]:
    """The route serving the bundle's assets (``check_dir=False``: a console whose
    bundle is missing still serves its API)."""
    return [Mount("/assets", app=_Assets(directory=STATIC / "assets", check_dir=False))]


async def not_found(request: Request, exc: Exception) -> Response:
    """Starlette's 404 handler: ``index.html`` for the page's own routes (see the
    module docstring), a JSON 404 under ``/api/``, else plain 404."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if path == "/api" or path.startswith("/api/"):
        return error_response(404, "NOT_FOUND", f"no API route {path}")
    index = STATIC / "index.html"
    if request.method in ("GET", "HEAD") and not path.startswith("/assets/") and index.is_file():
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})
    return PlainTextResponse("Not Found", status_code=404)
