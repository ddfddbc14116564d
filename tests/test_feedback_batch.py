"""``POST /v1/feedback/batch``: a day's labels at once, each recorded or refused on its own,
tenants kept apart; served for real over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
from test_service import confident, serve, settings

from guardrail.pipeline import Guardrail, load_policy_setting
from service import create_app
from service.schemas import MAX_FEEDBACK_BATCH

BODY = {
    "question": "What is the capital of France?",
    "passages": [{"text": "Paris is the capital of France."}],
}
A = {"Authorization": "Bearer sk-a"}
B = {"Authorization": "Bearer sk-b"}


def test_a_batch_records_its_own_labels_and_refuses_the_rest(tmp_path: Path) -> None:
    guard = Guardrail(backend=confident(), policy=load_policy_setting("balanced"))
    config = settings(tmp_path, api_keys={"sk-a": "a", "sk-b": "b"}, max_body_bytes=1_000_000)
    with serve(create_app(config, guard=guard)) as base, httpx.Client(base_url=base) as http:
        mine = [http.post("/v1/answer", json=BODY, headers=A).json()["id"] for _ in range(2)]
        theirs = http.post("/v1/answer", json=BODY, headers=B).json()["id"]
        items = [
            {"decision_id": mine[0], "correct": True, "label": "right"},
            {"decision_id": "dec_nope", "correct": False},
            {"decision_id": theirs, "correct": False},
            {"decision_id": mine[1], "correct": False, "comment": "outdated"},
        ]
        reply = http.post("/v1/feedback/batch", json={"items": items}, headers=A)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["recorded"], body["refused"]) == (2, 2)
        assert [item["recorded"] for item in body["items"]] == [True, False, False, True]
        assert body["items"][1]["error"]["type"] == "unknown_decision"
        # Another tenant's decision is as unknown as a missing one.
        assert body["items"][2]["error"] == {
            "type": "unknown_decision",
            "message": f"no decision {theirs!r} for this API key",
        }
        labels = http.get(f"/v1/decisions/{mine[1]}", headers=A).json()["feedback"]
        assert [(f["correct"], f["comment"]) for f in labels] == [(False, "outdated")]
        assert http.get(f"/v1/decisions/{theirs}", headers=B).json()["feedback"] == []

        empty = http.post("/v1/feedback/batch", json={"items": []}, headers=A)
        assert empty.status_code == 422 and "items" in empty.json()["error"]["message"]
        too_many = [{"decision_id": mine[0], "correct": True}] * (MAX_FEEDBACK_BATCH + 1)
        refused = http.post("/v1/feedback/batch", json={"items": too_many}, headers=A)
        assert refused.status_code == 422, refused.text
        assert http.post("/v1/feedback/batch", json={"items": items}).status_code == 401
