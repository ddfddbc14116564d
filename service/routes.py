"""The routes: liveness, readiness, and answering one question."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from guardrail.policy_runtime import RELOAD_ERRORS, Loaded
from service.deps import AdminDep, GuardDep, StateDep
from service.errors import error_body
from service.schemas import AnswerRequest

router = APIRouter()

_ERROR = {"description": 'An error: {"error": {"type": ..., "message": ...}}'}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it may still be building the pipeline)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses={503: _ERROR})
async def readyz(state: StateDep) -> dict[str, Any] | JSONResponse:
    """200 with the policy and index size once the pipeline is built; 503 until then."""
    guard = state.guard
    if guard is None:
        error = state.not_ready()
        return JSONResponse(
            {"status": state.status, **error_body(error.error_type, error.message)},
            status_code=503,
            headers=error.headers,
        )
    return {
        "status": "ready",
        "policy": guard.policy.name,
        "policy_hash": guard.policy.content_hash,
        "index_passages": len(guard.index) if guard.index is not None else 0,
        "model": guard.backend.name,
    }


@router.post(
    "/v1/answer", responses={400: _ERROR, 413: _ERROR, 422: _ERROR, 500: _ERROR, 503: _ERROR}
)
async def answer(body: AnswerRequest, guard: GuardDep) -> dict[str, Any]:
    """Answer, hedge, defer or escalate one question, with the full decision record."""
    # A bad question is refused here, before it queues for the model.
    question = guard.check_question(body.question)
    # The model runs for seconds on the CPU: keep it off the event loop.
    response = await run_in_threadpool(guard.ask, question, passages=body.to_passages())
    return response.to_dict()


def _policies_body(loaded: Loaded) -> dict[str, Any]:
    return {
        "source": str(loaded.path) if loaded.path else None,
        "loaded_at": loaded.loaded_at,
        "policies": [
            {
                "tenant": tenant,
                "name": policy.name,
                "hash": policy.content_hash,
                "mode": policy.mode,
                "description": policy.description,
            }
            for tenant, policy in loaded.policies.all().items()
        ],
    }


@router.get("/v1/policies", responses={503: _ERROR})
async def policies(guard: GuardDep) -> dict[str, Any]:
    """The policies in force: the base policy (tenant null) and each tenant's, with hashes."""
    return _policies_body(guard.policies.current)


@router.post(
    "/v1/policies/reload",
    dependencies=[AdminDep],
    response_model=None,
    responses={401: _ERROR, 403: _ERROR, 422: _ERROR, 503: _ERROR},
)
async def reload_policies(guard: GuardDep) -> dict[str, Any] | JSONResponse:
    """Read the policy file again (admin key). A file that does not validate replaces
    nothing: the answer is 422 with every problem, and the old policies stay in force."""
    before = guard.policies.current
    try:
        loaded = await run_in_threadpool(guard.policies.reload)
    except RELOAD_ERRORS as exc:
        problems = [line.strip() for line in str(exc).splitlines() if line.strip()]
        body = error_body(
            "policy_error",
            "the policy file was not reloaded, the policies in force are unchanged: "
            + "; ".join(problems),
        )
        body["error"]["problems"] = problems
        body["in_force"] = _policies_body(before)
        return JSONResponse(body, status_code=422)
    return {"reloaded": True, **_policies_body(loaded)}
