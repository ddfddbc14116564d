"""Every route of the real app, served over HTTP, against inputs generated from its own
published schema (schemathesis): never a 5xx, and every response matches the schema.

Checked: no 5xx, documented status codes, content types, headers and response bodies. Not
checked: that every schema-valid request is accepted, because some rules span fields or
settings and JSON Schema cannot state them (passage ids must be unique, including the
default ``request-<n>`` ids; the question's length limit is a setting). Those get a 422 that
names the rule, which other tests check.

The model is the scripted one (a genuine ``GeneratorBackend``): what is under test is the
service's handling of input, not the model's answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from test_service import confident, serve
from test_service import settings as service_settings

from guardrail.pipeline import Guardrail, load_policy_setting
from retrievers import HashingEmbedder, Passage, PassageIndex
from service import create_app

PASSAGES = [
    Passage("paris", "Paris is the capital of France.", "atlas.txt", title="France"),
    Passage("rome", "Rome is the capital of Italy.", "atlas.txt", title="Italy"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index = PassageIndex.build(PASSAGES, HashingEmbedder(), progress=False)
    guard = Guardrail(backend=confident(), policy=load_policy_setting("balanced"), index=index)
    config = service_settings(Path(tmp_path_factory.mktemp("fuzz")), rate_limit_per_minute=0)
    with serve(create_app(config, guard=guard)) as url:
        yield url


def test_every_route_survives_generated_input(base: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # every route of the published schema
    tried: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()
        tried.append(operation.label)
    assert len(tried) == len(operations)
