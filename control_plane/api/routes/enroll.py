"""POST /enroll: a one-time enrollment token becomes the device's credentials."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx
from control_plane.schemas import EnrollRequest, EnrollResponse
from control_plane.services import devices

router = APIRouter(prefix=API_PREFIX, tags=["device"])


@router.post("/enroll", response_model=EnrollResponse,
             responses={401: {"description": "token unknown, used, expired or device revoked"}})
async def enroll(body: EnrollRequest, ctx: Ctx) -> EnrollResponse:
    """Exchange a one-time enrollment token for the device's bearer token and the server's signing
    public keys (pin them: manifests signed by other keys are to be rejected)."""
    device, token = await ctx.db.run(devices.enroll, enrollment_token=body.enrollment_token,
                                     agent_version=body.agent_version)
    return EnrollResponse(device_id=device.id, device_token=token, signing_keys=ctx.signing_keys(),
                          base_model=device.base_model, poll_interval_s=ctx.settings.poll_interval_s)
