"""Dependencies of the routes, as ``Annotated`` aliases: ``guard: GuardDep`` and so on.

They are ``async`` so that they never take a threadpool thread, which the blocking model
calls need.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from guardrail.pipeline import Guardrail
from service.errors import ApiError
from service.recording import ANONYMOUS, Answerer, Caller
from service.settings import ServiceSettings
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    """The app's ``ServiceState``, set by its lifespan."""
    state = getattr(request.app.state, "service", None)
    if not isinstance(state, ServiceState):
        raise ApiError(
            503, "not_ready", "the app's lifespan has not run; serve it with an ASGI server"
        )
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> ServiceSettings:
    """The settings the app was created with."""
    return state.settings


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


async def get_guard(state: StateDep) -> Guardrail:
    """The pipeline, or a 503 ``not_ready`` error while it is being built or failed to."""
    return state.require_guard()


GuardDep = Annotated[Guardrail, Depends(get_guard)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """Admin operations need ``Authorization: Bearer <admin key>``: 401 without a key,
    403 with a wrong one or when the server has no admin key configured."""
    configured = settings.admin_key.get_secret_value() if settings.admin_key else ""
    if not configured:
        raise ApiError(
            403,
            "admin_disabled",
            "admin operations are disabled on this server: set GUARDRAIL_ADMIN_KEY to enable them",
        )
    given = _bearer(request)
    if given is None:
        raise ApiError(
            401,
            "unauthorized",
            "this operation needs the admin key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode(), configured.encode()):
        raise ApiError(403, "forbidden", "the admin key is not valid")


AdminDep = Depends(require_admin)


async def require_dashboard_access(request: Request, settings: SettingsDep) -> None:
    """The dashboard's data shows every tenant's decisions: the admin key when one is set;
    open when the server has no keys at all (a local set-up); otherwise refused."""
    if settings.admin_key is not None and settings.admin_key.get_secret_value():
        await require_admin(request, settings)
    elif settings.api_keys:
        raise ApiError(
            403,
            "admin_disabled",
            "the dashboard shows every tenant's decisions and needs the admin key: set "
            "GUARDRAIL_ADMIN_KEY",
        )


DashboardDep = Depends(require_dashboard_access)


async def get_answerer(state: StateDep) -> Answerer:
    """What every answering endpoint records with (the store, the metrics)."""
    if state.answerer is None:
        raise ApiError(503, "not_ready", "the decision store is not open yet")
    return state.answerer


AnswererDep = Annotated[Answerer, Depends(get_answerer)]


async def get_caller(request: Request, settings: SettingsDep) -> Caller:
    """The caller's tenant from their API key (``Authorization: Bearer <key>``).

    Without configured API keys every caller is anonymous (the base policy). With them, a
    request without a key, or with a key that is not configured, is a 401; the admin key
    also works here, as the base policy.
    """
    if not settings.api_keys:
        return ANONYMOUS
    given = _bearer(request)
    if given is None:
        raise ApiError(
            401,
            "unauthorized",
            "this server needs an API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    for key, tenant in settings.api_keys.items():
        if hmac.compare_digest(given.encode(), key.encode()):
            return Caller.from_key(key, tenant or None)
    admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
    if admin and hmac.compare_digest(given.encode(), admin.encode()):
        return Caller.from_key(admin, None, admin=True)
    raise ApiError(
        401,
        "invalid_api_key",
        "the API key is not valid",
        headers={"WWW-Authenticate": "Bearer"},
    )


CallerDep = Annotated[Caller, Depends(get_caller)]
