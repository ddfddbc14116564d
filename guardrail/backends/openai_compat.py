"""A backend over an OpenAI-compatible server (vLLM, this project's model server, ...):
proxy mode, where the wrapped chatbot's own model generates.

Generation uses ``POST /v1/completions`` with ``logprobs: k``; the no-passage pass of the
same answer tokens (teacher forcing) uses ``echo: true`` on the prompt followed by the
answer, and reads the answer tokens' log-probabilities back. The distributions a server
returns are top-k, not the whole vocabulary, so entropies and margins are computed on the
renormalised top-k (``TokenStats.full_vocab`` is false) and are smaller than the embedded
model's. A server that refuses ``echo`` makes the Confidence Gain signals unavailable
(``ScoringUnavailable``), and the policy decides on the rest; a server that returns no
``logprobs`` leaves the token signals unavailable too (a local guard model can then read the
answer instead: see ``guardrail.pipeline``). The chat route is in
``guardrail.backends.openai_chat``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from guardrail.cancel import checkpoint
from guardrail.errors import BackendError, ConfigError
from guardrail.redact import without_credentials
from guardrail.text import valid_unicode
from guardrail.types import FinishReason, Generation, TokenStats


class ScoringUnavailable(BackendError):
    """The server cannot score a given continuation (no ``echo`` with ``logprobs``)."""


def _topk_stats(alternatives: dict[str, float], chosen: float) -> tuple[float, float, float]:
    """Entropy, top-1 margin and self-certainty of a renormalised top-k distribution."""
    if not alternatives:
        return 0.0, 0.0, 0.0
    values = sorted(alternatives.values(), reverse=True)
    peak = max(values[0], chosen)
    weights = [math.exp(v - peak) for v in values]
    total = sum(weights)
    probs = [w / total for w in weights]
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    margin = probs[0] - (probs[1] if len(probs) > 1 else 0.0)
    k = len(probs)
    self_certainty = -math.log(k) - sum(math.log(p) for p in probs if p > 0) / k
    return entropy, margin, self_certainty


def topk_token_stats(
    tokens: Sequence[str],
    logprobs: Sequence[float],
    tops: Sequence[dict[str, float]],
    id_of: Callable[[str], int],
    token_ids: Sequence[int] | None = None,
) -> TokenStats:
    """``TokenStats`` from what an OpenAI-style API returns: each token's text and
    log-probability and its top-k alternatives (``{text: logprob}``). ``id_of`` gives a stable
    id for a token's text when the server's own ids (``token_ids``) are not known."""
    entropies, margins, certainty, top_ids = [], [], [], []
    for piece, logprob, alternatives in zip(tokens, logprobs, tops, strict=True):
        entropy, margin, sc = _topk_stats(alternatives or {piece: logprob}, logprob)
        entropies.append(entropy)
        margins.append(margin)
        certainty.append(sc)
        best = max(alternatives, key=lambda t: alternatives[t]) if alternatives else piece
        top_ids.append(id_of(best))
    ids = tuple(token_ids) if token_ids is not None else tuple(id_of(t) for t in tokens)
    return TokenStats(
        token_ids=ids,
        tokens=tuple(tokens),
        logprobs=tuple(float(v) for v in logprobs),
        entropies=tuple(entropies),
        top_ids=tuple(top_ids),
        margins=tuple(margins),
        kl_uniform=tuple(certainty),
        full_vocab=False,
    )


def finite_logprob(value: Any) -> float | None:
    """A log-probability from a server's reply as a finite float, or None when it is not one
    (``null``, text, ``-Infinity``, ``NaN``: some servers write an impossible token's
    log-probability as ``null`` or as an infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def alternatives(tops: Any) -> dict[str, float] | None:
    """A token's top-k alternatives as ``{text: logprob}``, from OpenAI's chat shape (a list of
    ``{"token", "logprob"}``) or the completions shape (a ``{text: logprob}`` mapping); an
    alternative without a finite log-probability is left out (it carries no weight), and a
    reply of neither shape gives None."""
    if tops is None:
        return {}
    if isinstance(tops, dict):
        pairs = list(tops.items())
    elif isinstance(tops, list) and all(isinstance(t, dict) for t in tops):
        pairs = [(t.get("token"), t.get("logprob")) for t in tops]
    else:
        return None
    kept: dict[str, float] = {}
    for token, logprob in pairs:
        if not isinstance(token, str):
            return None
        value = finite_logprob(logprob)
        if value is not None:
            kept[token] = value
    return kept


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped (the answer the pipeline judges)."""
    for line in text.strip().split("\n"):
        if line.strip():
            return line.strip()
    return ""


def prompt_token_count(data: dict[str, Any]) -> int:
    """The reply's ``usage.prompt_tokens``, or 0 when it gives no count."""
    usage = data.get("usage")
    count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def first_choice(data: dict[str, Any], shown_url: str) -> dict[str, Any]:
    """The first choice of a completion, or a ``BackendError`` for a malformed reply."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendError(f"the model server at {shown_url} returned no choices")
    choice: dict[str, Any] = choices[0]
    return choice


class UpstreamRefusal(BackendError):
    """The upstream answered a request with an error status (``status``)."""

    status: int = 0


def _header_safe_key(api_key: str | None, shown_url: str) -> str | None:
    """The API key without surrounding whitespace (a key read from a file often ends in a
    newline); a ``ConfigError`` that does not show it when it holds other characters an HTTP
    header cannot carry."""
    if api_key is None:
        return None
    key = api_key.strip()
    if any(not " " <= ch <= "~" for ch in key):
        raise ConfigError(
            f"the API key for {shown_url} holds a control or non-ASCII character (an HTTP "
            "header cannot carry it); check how the setting upstream_api_key is written"
        )
    return key or None


def _completion_logprobs(
    logprobs: Any,
) -> tuple[list[str], list[float], list[dict[str, float]]] | None:
    """A completion's tokens, their log-probabilities and top-k alternatives, or None when the
    reply has none or any of them is malformed or not finite (its token signals are then
    unavailable rather than wrong)."""
    if not isinstance(logprobs, dict):
        return None
    tokens = logprobs.get("tokens")
    raw_values = logprobs.get("token_logprobs")
    raw_tops = logprobs.get("top_logprobs")
    if not isinstance(tokens, list) or not tokens or not isinstance(raw_values, list):
        return None
    if raw_tops is None:
        raw_tops = [None] * len(tokens)
    if not isinstance(raw_tops, list) or not len(tokens) == len(raw_values) == len(raw_tops):
        return None
    values = [finite_logprob(v) for v in raw_values]
    tops = [alternatives(t) for t in raw_tops]
    if not all(isinstance(t, str) for t in tokens) or None in values or None in tops:
        return None
    return (
        tokens,
        [v for v in values if v is not None],
        [t for t in tops if t is not None],
    )


class OpenAIClient:
    """The HTTP side shared by the backends over an OpenAI-compatible server: one client for
    ``base_url`` (which ends in ``/v1``) and one model name, errors that never show
    credentials, and stable ids for token texts (the servers do not return their own)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        top_logprobs: int = 5,
        timeout_seconds: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._shown_url = without_credentials(self.base_url)
        self.name = model
        self.top_logprobs = top_logprobs
        self._api_key = _header_safe_key(api_key, self._shown_url)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_seconds, transport=transport
        )
        self._vocab: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def _id(self, piece: str) -> int:
        """A stable id for a token's text (the server's own ids are not returned)."""
        with self._lock:
            if piece not in self._vocab:
                self._vocab[piece] = len(self._pieces)
                self._pieces.append(piece)
            return self._vocab[piece]

    def _redacted(self, text: str) -> str:
        """``text`` without the API key (a transport error can quote the header it refused)."""
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

    def _post(
        self, path: str, body: dict[str, Any], refused: type[BackendError] = BackendError
    ) -> dict[str, Any]:
        """POST ``body``; a 4xx/5xx answer raises ``refused`` with the server's message and
        the status (``UpstreamRefusal.status``, when ``refused`` is one)."""
        checkpoint()  # a cancelled request does not call the upstream
        try:
            response = self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise BackendError(
                f"the model server at {self._shown_url} is unreachable: "
                + self._redacted(str(exc) or type(exc).__name__)
            ) from exc
        if response.status_code >= 400:
            try:
                detail = self._redacted(str(response.json()["error"]["message"]))[:200]
            except (ValueError, KeyError, TypeError):
                detail = "no error message"
            error = refused(
                f"the model server at {self._shown_url} answered {response.status_code}: {detail}"
            )
            if isinstance(error, UpstreamRefusal):
                error.status = response.status_code
            raise error
        try:
            # Text from elsewhere: unpaired surrogates would break every store and log.
            data = valid_unicode(response.json())
        except ValueError as exc:
            raise BackendError(
                f"the model server at {self._shown_url} answered with something not JSON"
            ) from exc
        if not isinstance(data, dict):
            raise BackendError(
                f"the model server at {self._shown_url} answered with JSON that is not an "
                f"object ({type(data).__name__}); an OpenAI-compatible reply is one"
            )
        return data

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


class OpenAICompatibleBackend(OpenAIClient):
    """A ``GeneratorBackend`` over a server's ``/v1/completions`` route."""

    chat = False  # few-shot completion prompts: they work with base and instruct models

    def _stats(
        self, tokens: Sequence[str], logprobs: Sequence[float], tops: Sequence[dict[str, float]]
    ) -> TokenStats:
        return topk_token_stats(tokens, logprobs, tops, self._id)

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        """Greedy completion up to the first newline, with top-k log-probabilities where the
        server returns them (without: the text alone, and empty token statistics)."""
        start = time.perf_counter()
        data = self._post(
            "/completions",
            {
                "model": self.name,
                "prompt": prompt,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "logprobs": self.top_logprobs,
                "stop": ["\n"],
            },
        )
        choice = first_choice(data, self._shown_url)
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "newline"
        read = _completion_logprobs(choice.get("logprobs"))
        if read is None:
            # A server without (usable) log-probabilities: the answer is still judged, on the
            # signals that do not need the generator's tokens.
            return Generation(
                text=first_line(str(choice.get("text") or "")),
                stats=TokenStats.empty(),
                prompt_tokens=prompt_token_count(data),
                finish_reason=finish,
                seconds=time.perf_counter() - start,
            )
        tokens, values, tops = read
        # The answer is the text up to the first newline, as the few-shot prompt expects.
        keep = len(tokens)
        for i, piece in enumerate(tokens):
            if "\n" in piece:
                keep = i
                break
        tokens, values, tops = tokens[:keep], values[:keep], tops[:keep]
        text = "".join(tokens).strip()
        return Generation(
            text=text,
            stats=self._stats(tokens, values, tops),
            prompt_tokens=prompt_token_count(data),
            finish_reason=finish,
            seconds=time.perf_counter() - start,
        )

    def score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        """Teacher forcing through ``echo``: the log-probabilities of ``continuation``'s
        tokens after ``prompt``."""
        text = (
            continuation
            if isinstance(continuation, str)
            else "".join(self._pieces[i] for i in continuation)
        )
        if not text:
            return TokenStats.empty()
        data = self._post(
            "/completions",
            {
                "model": self.name,
                "prompt": prompt + text,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": self.top_logprobs,
                "echo": True,
            },
            refused=ScoringUnavailable,
        )
        logprobs = first_choice(data, self._shown_url).get("logprobs")
        logprobs = logprobs if isinstance(logprobs, dict) else {}
        offsets = logprobs.get("text_offset") or []
        tokens = logprobs.get("tokens") or []
        values = logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or [None] * len(tokens)
        if not offsets:
            raise ScoringUnavailable(
                f"the model server at {self._shown_url} returned no prompt log-probabilities "
                "for echo"
            )
        if not all(isinstance(x, list) for x in (offsets, tokens, values, tops)) or not (
            len(offsets) == len(tokens) == len(values) == len(tops)
        ):
            raise ScoringUnavailable(
                f"the model server at {self._shown_url} returned echo log-probabilities of "
                "mismatched lengths or shapes"
            )
        end = len(prompt) + len(text)
        picked = [
            i
            for i, offset in enumerate(offsets)
            if isinstance(offset, int) and len(prompt) <= offset < end and values[i] is not None
        ]
        expected = None if isinstance(continuation, str) else len(continuation)
        if expected is not None and len(picked) != expected:
            # The server split prompt + answer differently from the answer it generated: the
            # token-by-token comparison of Confidence Gain is not defined then.
            raise ScoringUnavailable(
                f"the model server re-tokenised the answer into {len(picked)} tokens, "
                f"not the {expected} it generated"
            )
        if not picked:
            return TokenStats.empty()
        read = _completion_logprobs(
            {
                "tokens": [tokens[i] for i in picked],
                "token_logprobs": [values[i] for i in picked],
                "top_logprobs": [tops[i] for i in picked],
            }
        )
        if read is None:
            raise ScoringUnavailable(
                f"the model server at {self._shown_url} returned answer log-probabilities "
                "that are malformed or not finite"
            )
        return self._stats(*read)

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """Not used: proxy mode prompts with plain few-shot text."""
        raise NotImplementedError("the OpenAI-compatible backend uses few-shot prompts")
