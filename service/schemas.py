"""Request bodies of the HTTP API, validated by FastAPI before a route runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrievers.types import Passage

MAX_PASSAGES = 20
"""At most this many passages per request; each costs prompt tokens and time."""

MAX_HISTORY = 50
MAX_FEEDBACK_BATCH = 1000
"""Labels in one ``POST /v1/feedback/batch`` (a day's labelled sample at once)."""
"""At most this many earlier turns per request (the rewriter reads the last few)."""

USAGE = (
    'expected a JSON object {"question": "...", "passages": [{"text": "...", "id": "...", '
    '"title": "...", "source": "..."}], "history": [{"role": "user"|"assistant", "content": '
    '"..."}]} where "passages" is optional (at most '
    f"{MAX_PASSAGES}; without it the server searches its index) and each passage needs only "
    '"text", and "history" (optional, the conversation before the question, at most '
    f"{MAX_HISTORY} turns) makes a follow-up question stand on its own"
)
"""What a valid /v1/answer body looks like, appended to every request error."""

FEEDBACK_USAGE = (
    'expected a JSON object {"decision_id": "dec_...", "correct": true|false|null, '
    '"label": "...", "comment": "..."} where label and comment are optional'
)
CHAT_USAGE = (
    'expected an OpenAI chat completion request {"model": "...", "messages": [{"role": '
    '"user", "content": "..."}], "stream": false}; the last user message is the question'
)


def usage_for(path: str) -> str:
    """What a valid body of the route at ``path`` looks like."""
    if path.startswith("/v1/feedback"):
        return FEEDBACK_USAGE
    if path.startswith("/v1/chat/"):
        return CHAT_USAGE
    if path.startswith("/v1/completions"):
        return 'expected an OpenAI completion request {"model": "...", "prompt": "..."}'
    return USAGE


class PassageIn(BaseModel):
    """A passage given with the question, used instead of retrieval."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        description="The passage's words; must not be blank.",
        json_schema_extra={"minLength": 1, "pattern": r"\S"},
    )
    id: str | None = Field(default=None, description="Cited by this id; default request-<n>.")
    title: str | None = None
    source: str | None = Field(default=None, description="Default 'request'.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the passage text is blank; give the passage's words or leave it out")
        return value


class TurnIn(BaseModel):
    """One earlier message of the conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str


class AnswerRequest(BaseModel):
    """The body of ``POST /v1/answer``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(
        min_length=1,
        description="The question, in words: at least one letter or digit.",
        json_schema_extra={"pattern": r"[^\W_]"},
    )
    passages: list[PassageIn] | None = Field(
        default=None,
        max_length=MAX_PASSAGES,
        description="Answer from these instead of the index; [] means no documents at all.",
    )
    history: list[TurnIn] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="The conversation before the question, oldest first; a follow-up is "
        "rewritten into a standalone question (the record keeps both).",
    )

    def turns(self) -> list[tuple[str, str]]:
        """The history as ``(role, content)`` pairs."""
        return [(turn.role, turn.content) for turn in self.history]

    @model_validator(mode="after")
    def _unique_ids(self) -> AnswerRequest:
        seen: set[str] = set()
        for position, passage_id in enumerate(self._ids()):
            if passage_id in seen:
                raise ValueError(
                    f"passages[{position}] has the id {passage_id!r} of an earlier passage; "
                    "citations name passages by id, so ids must be unique"
                )
            seen.add(passage_id)
        return self

    def _ids(self) -> list[str]:
        return [
            p.id if p.id is not None else f"request-{position}"
            for position, p in enumerate(self.passages or (), start=1)
        ]

    def to_passages(self) -> list[Passage] | None:
        """The given passages as pipeline passages, or None to search the index."""
        if self.passages is None:
            return None
        return [
            Passage(id=passage_id, text=p.text, source=p.source or "request", title=p.title or "")
            for passage_id, p in zip(self._ids(), self.passages, strict=True)
        ]


class FeedbackRequest(BaseModel):
    """The body of ``POST /v1/feedback``: a label for a past decision."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=100, description="The decision's id.")
    correct: bool | None = Field(
        description="Is the decision's answer (its `answer` field, even when the policy "
        "deferred it) right? For the model's own abstention: true when the documents held no "
        "answer. null: a comment, not a label."
    )
    label: str | None = Field(default=None, max_length=200, description="A short tag.")
    comment: str | None = Field(default=None, max_length=2000)


class FeedbackBatchRequest(BaseModel):
    """The body of ``POST /v1/feedback/batch``: many labels at once."""

    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackRequest] = Field(
        min_length=1,
        max_length=MAX_FEEDBACK_BATCH,
        description=f"At most {MAX_FEEDBACK_BATCH} labels; each is recorded or refused on its own.",
    )
