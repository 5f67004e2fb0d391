"""/api/health and the documents for agents (/llms.txt, /install.sh): what answers without a token."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mxd.api import pages
from mxd.api.endpoint import PUBLIC, endpoint
from mxd.api.http import ctx
from mxd.api.schemas import TEXT, ref
from mxd.service import admin

TAG = "System"


@endpoint("GET", "/api/health", "health", "Liveness and the server's hostname", TAG, PUBLIC, response=ref("Health"),
          errors=())
async def health(request: Request, principal: None) -> Response:
    return JSONResponse(await admin.health(ctx(request)))


@endpoint("GET", "/llms.txt", "llmsTxt", "A plain-text guide to this API for language models", TAG, PUBLIC,
          response=TEXT, media="text/plain", errors=())
async def llms(request: Request, principal: None) -> Response:
    return PlainTextResponse(pages.llms_txt(pages.base_url(request)))


@endpoint("GET", "/install.sh", "installSh", "Installer of the agent mail skills (sh)", TAG, PUBLIC, response=TEXT,
          media="text/x-shellscript", errors=())
async def install(request: Request, principal: None) -> Response:
    return Response(pages.install_script(pages.base_url(request)), media_type="text/x-shellscript; charset=utf-8",
                    headers={"Cache-Control": "no-cache"})
