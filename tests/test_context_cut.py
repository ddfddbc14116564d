"""Long passage lists are cut to the model's context by rank, with the record saying so,
never a 5xx (issue: 20 passages of 3 KB gave 503 "prompt has 7003 tokens")."""

from __future__ import annotations

from pathlib import Path

import httpx
from fakes import ScriptedBackend, peaked
from test_service import serve, settings

from guardrail.config import GuardrailConfig
from guardrail.errors import BackendError
from guardrail.pipeline import Guardrail, load_policy_setting
from guardrail.types import Generation
from retrievers import Passage
from service import create_app

VOCAB = ("Paris", "Lyon")
QUESTION = "What is the capital of France?"


class SmallContext(ScriptedBackend):
    """A scripted model with a context of ``max_context_tokens`` words that refuses longer
    prompts, as the local backend does."""

    def __init__(self, max_context_tokens: int) -> None:
        super().__init__(
            VOCAB,
            contextual=[peaked(VOCAB, "Paris", 0.9)],
            parametric=[peaked(VOCAB, "Paris", 0.9)],
        )
        self.max_context_tokens = max_context_tokens
        self.longest = 0

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        if self.count_tokens(prompt) > self.max_context_tokens:
            raise BackendError(f"the prompt has {self.count_tokens(prompt)} tokens")
        self.longest = max(self.longest, self.count_tokens(prompt))
        return super().generate(prompt, max_new_tokens=max_new_tokens, probe=probe)


def passages(n: int, words: int = 100) -> list[Passage]:
    filler = " ".join(["word"] * (words - 6))
    return [
        Passage(f"p{i}", f"Paris is the capital {i}. {filler}", "s", score=1 - i / 100)
        for i in range(n)
    ]


def test_the_lowest_ranked_passages_are_left_out_and_the_record_says_so() -> None:
    model = SmallContext(max_context_tokens=400)
    config = GuardrailConfig(max_passage_words=100, max_new_tokens=24)
    guard = Guardrail(backend=model, policy=load_policy_setting("balanced"), config=config)
    response = guard.ask(QUESTION, passages=passages(20))
    assert "passages_cut" in response.flags
    detail = response.flag_details["passages_cut"]
    kept = int(detail.split(" of ")[0])
    assert 1 <= kept < 20 and "20 passages fit" in detail
    assert model.longest + 24 <= 400  # room was left for the answer
    # The most that fit: one more would not have.
    prompt_with_one_more = guard.fitting(model, QUESTION, passages(kept + 1))
    assert len(prompt_with_one_more) == kept
    assert {c.id for c in response.citations} <= {f"p{i}" for i in range(kept)}
    assert response.answer == "Paris"


def test_passages_that_fit_are_all_kept_and_no_flag_is_raised() -> None:
    model = SmallContext(max_context_tokens=4000)
    guard = Guardrail(backend=model, policy=load_policy_setting("balanced"))
    response = guard.ask(QUESTION, passages=passages(3))
    assert "passages_cut" not in response.flags
    assert guard.fitting(model, QUESTION, passages(3)) == passages(3)


def test_the_service_answers_a_long_passage_list_instead_of_a_5xx(tmp_path: Path) -> None:
    model = SmallContext(max_context_tokens=400)
    guard = Guardrail(backend=model, policy=load_policy_setting("balanced"))
    body = {"question": QUESTION, "passages": [{"text": p.text} for p in passages(20, 150)]}
    with serve(create_app(settings(tmp_path, max_body_bytes=65536), guard=guard)) as url:
        response = httpx.post(f"{url}/v1/answer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert "passages_cut" in response.json()["flags"]


def test_the_local_backend_counts_tokens_as_it_encodes() -> None:
    from guardrail.pipeline import local_backend

    backend = local_backend(GuardrailConfig(), "gemma-3-270m")
    prompt = "Question: What is the capital of France?\nAnswer:"
    assert backend.count_tokens(prompt) == len(backend._encode_prompt(prompt))
