"""The one ``Guardrail`` a server process serves, and whether it is ready yet.

Building the pipeline loads the policy and the index, prepares the model (a conversion of
about a minute on the very first run) and loads it. It runs in a background thread started
by the app's lifespan, so the server answers ``/healthz`` at once and ``/readyz`` says 503
until the pipeline is ready, or for good if building it failed (with the reason).
"""

from __future__ import annotations

import logging
import threading
from typing import Literal

from guardrail.pipeline import Guardrail
from service.errors import PIPELINE_ERRORS, ApiError, one_line
from service.recording import Answerer
from service.settings import ServiceSettings
from service.store.ledger import shared_ledger

logger = logging.getLogger(__name__)

Status = Literal["starting", "ready", "failed"]


def build_guard(settings: ServiceSettings) -> Guardrail:
    """Build the pipeline from settings and load its models, so the first request is fast."""
    guard = Guardrail.from_config(settings, with_index=True)
    ledger = shared_ledger(settings)
    if ledger is not None:
        guard.ledger = ledger  # escalation budgets hold across replicas sharing Redis
    # Local backends and the embedder load their weights on first use; do it now so that
    # "ready" means a request does not wait for a model to load.
    # Escalation models are converted now, never inside a request; one that fails is
    # logged, and requests that escalate to it get the policy's on_failure.
    for target, failure in guard.prepare_escalation().items():
        logger.error("escalation target %r is unavailable: %s", target, failure)
    for backend in (guard.backend, guard.guard):  # the generator, and proxy mode's guard
        load = getattr(backend, "load", None)
        if callable(load):
            load()
    guard.retrieve("warm-up")
    return guard


class ServiceState:
    """Readiness of the pipeline: starting, ready (with the guard) or failed (with why)."""

    def __init__(self, settings: ServiceSettings, answerer: Answerer | None = None) -> None:
        self.settings = settings
        self.answerer = answerer
        self._guard: Guardrail | None = None
        self._failure: str | None = None

    @property
    def status(self) -> Status:
        """Where the pipeline is: being built, ready to answer, or failed to build."""
        if self._guard is not None:
            return "ready"
        return "failed" if self._failure is not None else "starting"

    @property
    def guard(self) -> Guardrail | None:
        """The pipeline, once it is ready."""
        return self._guard

    def set_ready(self, guard: Guardrail) -> None:
        """Serve ``guard`` from now on, and report the budgets of its policies in force."""
        self._guard = guard
        if self.answerer is not None:
            # Read at each scrape: a reload swaps ``policies.current`` and shows at once.
            self.answerer.metrics.follow_policies(
                lambda: guard.policies.current.policies.all().values()
            )

    def build_in_background(self) -> threading.Thread:
        """Start building the pipeline from the settings in a daemon thread."""
        thread = threading.Thread(target=self._build, name="guardrail-build", daemon=True)
        thread.start()
        return thread

    def _build(self) -> None:
        try:
            guard = build_guard(self.settings)
        except PIPELINE_ERRORS as exc:
            self._failure = one_line(exc)
            logger.error("building the pipeline failed: %s", self._failure)
        except Exception:
            logger.exception("building the pipeline failed unexpectedly")
            self._failure = "an unexpected error occurred; the server log has the details"
        else:
            self.set_ready(guard)
            logger.info(
                "pipeline ready: policy %s, model %s", guard.policy.name, guard.backend.name
            )

    def not_ready(self) -> ApiError:
        """The 503 that explains why there is no pipeline to answer with."""
        if self._failure is not None:
            message = (
                f"the pipeline could not be built: {self._failure}; fix the setting and "
                "restart the server"
            )
        else:
            message = (
                "the pipeline is still being built (policy, index, models); "
                "retry when GET /readyz answers 200"
            )
        return ApiError(503, "not_ready", message, headers={"Retry-After": "5"})

    def require_guard(self) -> Guardrail:
        """The pipeline, or the 503 ``not_ready`` error."""
        guard = self._guard
        if guard is None:
            raise self.not_ready()
        return guard
