"""The routes: liveness, readiness, and answering one question."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from guardrail.policy_runtime import RELOAD_ERRORS, Loaded
from service.dashboard import dashboard_data, page, policy_targets
from service.deps import AdminDep, AnswererDep, CallerDep, DashboardDep, GuardDep, StateDep
from service.errors import ApiError, error_body
from service.metrics import Metrics
from service.recording import Answerer, Caller
from service.schemas import AnswerRequest, FeedbackBatchRequest, FeedbackRequest
from service.store import Feedback, StoreError, UnknownDecisionError

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
    store = (
        await run_in_threadpool(state.answerer.store_status) if state.answerer is not None else None
    )
    return {
        "status": "ready",
        "policy": guard.policy.name,
        "policy_hash": guard.policy.content_hash,
        "index_passages": len(guard.index) if guard.index is not None else 0,
        "model": guard.backend.name,
        "store": store,
    }


@router.post(
    "/v1/answer",
    responses={400: _ERROR, 413: _ERROR, 422: _ERROR, 429: _ERROR, 500: _ERROR, 503: _ERROR},
)
async def answer(
    body: AnswerRequest,
    guard: GuardDep,
    caller: CallerDep,
    answerer: AnswererDep,
    request: Request,
) -> dict[str, Any]:
    """Answer, hedge, defer or escalate one question, with the full decision record (its
    ``id`` names it for ``/v1/feedback``). The caller's API key picks the tenant's policy."""
    return await answerer.answer(
        guard,
        body.question,
        body.to_passages(),
        caller,
        endpoint="answer",
        history=body.turns(),
        disconnected=request.is_disconnected,
    )


@contextmanager
def _decision_errors(decision_id: str) -> Iterator[None]:
    """A decision the caller may not see is as unknown as a missing one (404)."""
    try:
        yield
    except UnknownDecisionError:
        raise ApiError(404, "unknown_decision", _unknown(decision_id)) from None
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", str(exc), headers={"Retry-After": "5"}) from None


def _unknown(decision_id: str) -> str:
    return f"no decision {decision_id!r} for this API key"


def _owned(answerer: Answerer, decision_id: str, caller: Caller) -> dict[str, Any]:
    """The recorded decision, if the caller may see it (blocking: the store is read);
    another tenant's decision raises ``UnknownDecisionError`` like a missing one."""
    record = answerer.store.get(decision_id)
    if record.get("tenant") != caller.tenant and caller.key_id != "anonymous":
        raise UnknownDecisionError(decision_id)
    return record


async def _own_record(answerer: Answerer, decision_id: str, caller: Caller) -> dict[str, Any]:
    return await run_in_threadpool(_owned, answerer, decision_id, caller)


@router.post("/v1/feedback", responses={401: _ERROR, 404: _ERROR, 422: _ERROR, 503: _ERROR})
async def feedback(
    body: FeedbackRequest, caller: CallerDep, answerer: AnswererDep
) -> dict[str, Any]:
    """A label for a past decision (was it right?), kept for recalibration. A tenant can
    only label its own decisions."""
    label = Feedback(body.decision_id, body.correct, body.label, body.comment)
    with _decision_errors(body.decision_id):
        await _own_record(answerer, body.decision_id, caller)
        await run_in_threadpool(answerer.store.add_feedback, label)
    return {"recorded": True, "feedback": label.to_dict()}


@router.post("/v1/feedback/batch", responses={401: _ERROR, 422: _ERROR})
async def feedback_batch(
    body: FeedbackBatchRequest, caller: CallerDep, answerer: AnswererDep
) -> dict[str, Any]:
    """Many labels at once (a team labels a day's sample). Each item is recorded or refused on
    its own, as ``/v1/feedback`` would: an unknown decision, or another tenant's, is refused
    (``unknown_decision``) without stopping the others; the reply lists every item's outcome
    in order and counts the recorded ones."""

    def record_all() -> list[dict[str, Any]]:
        outcomes: list[dict[str, Any]] = []
        for item in body.items:
            label = Feedback(item.decision_id, item.correct, item.label, item.comment)
            try:
                _owned(answerer, item.decision_id, caller)
                answerer.store.add_feedback(label)
            except UnknownDecisionError:
                outcomes.append(
                    _refused(item.decision_id, "unknown_decision", _unknown(item.decision_id))
                )
            except StoreError as exc:
                outcomes.append(_refused(item.decision_id, "store_unavailable", str(exc)))
            else:
                outcomes.append({"decision_id": item.decision_id, "recorded": True})
        return outcomes

    outcomes = await run_in_threadpool(record_all)
    recorded = sum(1 for outcome in outcomes if outcome["recorded"])
    return {"recorded": recorded, "refused": len(outcomes) - recorded, "items": outcomes}


def _refused(decision_id: str, kind: str, message: str) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "recorded": False,
        "error": {"type": kind, "message": message},
    }


@router.get("/v1/decisions/{decision_id}", responses={401: _ERROR, 404: _ERROR, 503: _ERROR})
async def get_decision(
    decision_id: str, caller: CallerDep, answerer: AnswererDep
) -> dict[str, Any]:
    """A recorded decision with its feedback (a tenant sees only its own)."""
    with _decision_errors(decision_id):
        record = await _own_record(answerer, decision_id, caller)
        labels = await run_in_threadpool(answerer.store.feedback, decision_id)
    return {**record, "feedback": [f.to_dict() for f in labels]}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)


def _policies_body(loaded: Loaded, caller: Caller | None = None) -> dict[str, Any]:
    """The policies in force; a tenant's key sees the base policy and its own, no file path."""
    every = loaded.policies.all()
    if caller is not None and not caller.admin:
        every = {t: p for t, p in every.items() if t is None or t == caller.tenant}
    return {
        "source": str(loaded.path) if loaded.path and (caller is None or caller.admin) else None,
        "loaded_at": loaded.loaded_at,
        "policies": [
            {
                "tenant": tenant,
                "name": policy.name,
                "hash": policy.content_hash,
                "mode": policy.mode,
                "description": policy.description,
            }
            for tenant, policy in every.items()
        ],
    }


@router.get("/v1/policies", responses={401: _ERROR, 503: _ERROR})
async def policies(guard: GuardDep, caller: CallerDep) -> dict[str, Any]:
    """The policies in force: the base policy (tenant null) and each tenant's, with hashes.
    With API keys, a tenant's key sees the base policy and its own tenant's only."""
    return _policies_body(guard.policies.current, caller)


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


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    """The refusal-rate dashboard (it loads its numbers from /v1/dashboard/data)."""
    return HTMLResponse(page(), headers={"Cache-Control": "no-cache"})


@router.get("/v1/dashboard/data", dependencies=[DashboardDep], responses={401: _ERROR, 403: _ERROR})
async def dashboard_numbers(
    answerer: AnswererDep,
    state: StateDep,
    hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24.0,
    bucket_seconds: Annotated[int, Query(ge=60, le=86400)] = 3600,
    latest: Annotated[int, Query(ge=1, le=500)] = 50,
    label_days: Annotated[float, Query(gt=0, le=90)] = 7.0,
) -> dict[str, Any]:
    """Rates per tenant and policy over time with their drift marks, the confidence
    histogram, labels and the measured error against each policy's target, the latest
    decisions."""
    guard = state.guard
    in_force = guard.policies.current.policies.all().values() if guard is not None else ()
    try:
        return await run_in_threadpool(
            dashboard_data,
            answerer.store,
            hours=hours,
            bucket_seconds=bucket_seconds,
            latest=latest,
            drift=answerer.settings.drift,
            targets=policy_targets(in_force),
            label_days=label_days,
        )
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", str(exc), headers={"Retry-After": "5"}) from None
