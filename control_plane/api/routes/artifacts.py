"""GET /artifacts/{sha256}: content-addressed, immutable files with Range support."""

from __future__ import annotations

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, Response

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, CurrentPrincipal
from control_plane.artifacts import check_sha256
from control_plane.errors import NotFoundError

router = APIRouter(prefix=API_PREFIX, tags=["device"])
SHA_PATTERN = r"^[0-9a-f]{64}$"


_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {}}}, 206: {"description": "the requested Range"},
    401: {}, 404: {}}


@router.head("/artifacts/{sha256}", response_class=Response, responses=_RESPONSES, name="head_artifact")
@router.get("/artifacts/{sha256}", response_class=Response, responses=_RESPONSES)
async def get_artifact(principal: CurrentPrincipal, ctx: Ctx,
                       sha256: str = Path(pattern=SHA_PATTERN, examples=["9f86d081884c7d659a2feaa0c55ad015"
                                                                          "a3bf4f1b2b0b822cd15d6c15b0f00a08"])) -> Response:
    """The file whose sha256 is in the path (a device token or an operator key). Immutable: cache
    it forever; resume an interrupted download with `Range: bytes=N-`."""
    path = ctx.store.local_path(check_sha256(sha256))
    if path is None:
        raise NotFoundError(f"artifact {sha256} is not in the store")
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Cache-Control": "public, max-age=31536000, immutable", "ETag": f'"{sha256}"'})
