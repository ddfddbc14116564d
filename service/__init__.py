"""guardrail's HTTP service: a FastAPI app factory over one ``Guardrail`` pipeline.

    GET  /healthz     the process is alive
    GET  /readyz      200 once the pipeline is built (policy, index size), 503 before
    POST /v1/answer   {"question": ..., "passages": [...]?} -> the full decision record

Run it with ``guardrail serve``, or ``uvicorn.run(create_app(ServiceSettings()))``. Every
error answers ``{"error": {"type": ..., "message": ...}}`` (see ``service.errors``).
Importing this package loads no model and reads no settings.
"""

from service.app import create_app
from service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
