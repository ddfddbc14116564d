"""The routes: liveness, readiness, and answering one question."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.deps import GuardDep, StateDep
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
