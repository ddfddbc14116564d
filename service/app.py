"""The app factory: ``create_app(settings)`` returns a FastAPI app that serves one pipeline.

Nothing happens at import or at ``create_app``: the app's lifespan builds the pipeline when
the server starts (in a background thread; ``/readyz`` says when it is ready), unless a
built ``Guardrail`` is passed in.

    uvicorn.run(create_app(ServiceSettings(policy="strict")), host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from guardrail.pipeline import Guardrail
from service.errors import install_error_handlers
from service.middleware import BodyLimitMiddleware, InternalErrorMiddleware
from service.routes import router
from service.settings import ServiceSettings
from service.state import ServiceState


def create_app(
    settings: ServiceSettings | None = None, *, guard: Guardrail | None = None
) -> FastAPI:
    """A FastAPI app serving ``guard``, or the pipeline built from ``settings`` at startup.

    ``settings`` defaults to ``ServiceSettings()`` (read from ``GUARDRAIL_*`` variables now).
    A given ``guard`` keeps its own pipeline configuration; the settings then only configure
    the server (the body limit).
    """
    settings = settings if settings is not None else ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings)
        if guard is not None:
            state.set_ready(guard)
        else:
            state.build_in_background()
        app.state.service = state
        yield

    app = FastAPI(
        title="guardrail",
        summary="Selective-answering RAG: answer, hedge, defer or escalate.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(InternalErrorMiddleware)  # added last: the outermost of the two
    install_error_handlers(app)
    return app
