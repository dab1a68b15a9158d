"""The console's browser front end: the bundle `scripts/build_console.py` builds from
console/web into ``static/`` (committed, so ``pip install`` alone gives a working console).

- ``GET /assets/<name>``: a bundle file (names carry a content hash), with
  ``Cache-Control: public, max-age=31536000, immutable`` (`ASSET_CACHE`); a missing
  one is 404.
- ``GET /`` and any other GET or HEAD path that no route serves, outside ``/api/`` and
  ``/assets/`` (the page's own routes: ``/overview``, ``/agents``, ``/custody``...): ``index.html``
  with ``Cache-Control: no-cache``, so a new bundle is picked up at once (`page`).
  Anything else no route serves is the API's JSON 404 or 405 (`app`).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

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


def page(request: Request) -> Response | None:
    """``index.html`` for a GET or HEAD of one of the page's own routes (any path
    outside ``/api/`` and ``/assets/``), or None (the caller answers 404)."""
    path = request.url.path
    index = STATIC / "index.html"
    if (
        request.method in ("GET", "HEAD")
        and path != "/api"
        and not path.startswith(("/api/", "/assets/"))
        and index.is_file()
    ):
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})
    return None
