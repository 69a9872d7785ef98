"""Rollouts: a fleet-wide version to a cohort in stages; advance, pause, resume, abort."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from control_plane.api import API_PREFIX
from control_plane.api.deps import Ctx, Operator, Viewer
from control_plane.schemas import MAX_INT, RolloutAction, RolloutCreate, RolloutPublic
from control_plane.services import rollouts

router = APIRouter(prefix=f"{API_PREFIX}/rollouts", tags=["rollouts"])


def _with_count(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(s: Any, *args: Any, **kwargs: Any) -> RolloutPublic:
        r = fn(s, *args, **kwargs)
        return RolloutPublic.model_validate(r).model_copy(update={"devices": rollouts.device_count(s, r.id)})

    return run


@router.get("", response_model=list[RolloutPublic])
async def list_rollouts(principal: Viewer, ctx: Ctx, state: str | None = None,
                        cohort: str | None = None) -> list[RolloutPublic]:
    def run(s: Any) -> list[RolloutPublic]:
        return [RolloutPublic.model_validate(r).model_copy(update={"devices": rollouts.device_count(s, r.id)})
                for r in rollouts.list_rollouts(s, state=state, cohort=cohort)]

    return await ctx.db.run(run)


@router.post("", response_model=RolloutPublic, status_code=status.HTTP_201_CREATED,
             responses={404: {}, 409: {"description": "cohort busy, or a device-specific version"}})
async def create_rollout(body: RolloutCreate, principal: Operator, ctx: Ctx) -> RolloutPublic:
    """Start rolling a fleet-wide version out to a cohort; the first stage is assigned at once."""
    return await ctx.db.run(_with_count(rollouts.create_rollout), version_id=body.version_id,
                            cohort=body.cohort, stages=body.stages, thresholds=body.thresholds,
                            reason=body.reason, actor=principal.actor)


@router.get("/{rollout_id}", response_model=RolloutPublic, responses={404: {}})
async def get_rollout(rollout_id: Annotated[int, Path(ge=0, le=MAX_INT)], principal: Viewer, ctx: Ctx) -> RolloutPublic:
    return await ctx.db.run(_with_count(rollouts.get_rollout), rollout_id)


def _action(name: str, fn: Callable[..., Any], doc: str) -> None:
    async def endpoint(rollout_id: Annotated[int, Path(ge=0, le=MAX_INT)], principal: Operator, ctx: Ctx,
                       body: RolloutAction | None = None) -> RolloutPublic:
        return await ctx.db.run(_with_count(fn), rollout_id, actor=principal.actor,
                                reason=(body or RolloutAction()).reason)

    endpoint.__doc__ = doc
    router.add_api_route(f"/{{rollout_id}}/{name}", endpoint, methods=["POST"], response_model=RolloutPublic,
                         name=f"{name}_rollout", responses={404: {}, 409: {"description": "wrong state"}})


_action("advance", rollouts.advance_rollout, "Move to the next stage (the last stage completes it).")
_action("pause", rollouts.pause_rollout, "Hold the rollout at its stage.")
_action("resume", rollouts.resume_rollout, "Continue a paused rollout.")
_action("abort", rollouts.abort_rollout, "Stop, and send every device it moved back to its previous version.")
