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
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, InternalErrorMiddleware, UnicodeMiddleware
from service.openai_api import router as openai_router
from service.recording import Answerer
from service.routes import router
from service.settings import ServiceSettings
from service.state import ServiceState
from service.store import open_store


def create_app(
    settings: ServiceSettings | None = None, *, guard: Guardrail | None = None
) -> FastAPI:
    """A FastAPI app serving ``guard``, or the pipeline built from ``settings`` at startup.

    ``settings`` defaults to ``ServiceSettings()`` (read from ``GUARDRAIL_*`` variables now).
    A given ``guard`` keeps its own pipeline configuration; the settings then only configure
    the server (the body limit).
    """
    settings = settings if settings is not None else ServiceSettings()

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The store first: decisions must have somewhere to go before any is made.
        store = open_store(settings)
        state = ServiceState(settings, Answerer(settings, store, metrics))
        if guard is not None:
            state.set_ready(guard)
        else:
            state.build_in_background()
        app.state.service = state
        try:
            yield
        finally:
            store.close()

    app = FastAPI(
        title="guardrail",
        summary="Selective-answering RAG: answer, hedge, defer or escalate.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.include_router(router)
    app.include_router(openai_router)
    app.add_middleware(UnicodeMiddleware)  # inside the body limit: it reads the whole body
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(InternalErrorMiddleware)  # added last: the outermost of the two
    install_error_handlers(app)
    return app
