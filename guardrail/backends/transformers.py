"""A backend over a local transformers causal LM with full next-token distributions.

Generation is a hand-written greedy loop over the KV cache (rather than ``model.generate``) so
that every step's full distribution is reduced to its statistics as it is produced, and so that
decoding stops at the first newline, as the few-shot prompts expect.

Prefix caching: few-shot prompts repeat the same examples for every question, so the key/value
cache of a prompt's head (everything up to its last blank line) is kept, keyed by its token
ids, and reused when a later prompt starts with exactly those tokens. This is what keeps the
no-passage ``score`` pass cheap next to the contextual generation.

Precision: ``dtype="auto"`` (the default) runs weights and activations in bfloat16 where the
CPU computes it natively (the 262k-row LM head is memory-bound, and bfloat16 halves its read)
and in float32 elsewhere, where bfloat16 is emulated and several times slower
(``guardrail.hardware``). The logits are always reduced to log-probabilities and entropies in
float32.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from guardrail.cancel import checkpoint
from guardrail.errors import BackendError
from guardrail.hardware import resolve_dtype, usable_cpus
from guardrail.types import FinishReason, Generation, TokenStats


def token_stats_from_logits(
    logits: torch.Tensor, token_ids: Sequence[int], tokens: Sequence[str]
) -> TokenStats:
    """Reduce next-token logits (one row per continuation token) to ``TokenStats``.

    Row ``i`` of ``logits`` is the distribution that predicted ``token_ids[i]``.
    """
    if logits.shape[0] != len(token_ids):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(token_ids)} tokens")
    if not token_ids:
        return TokenStats.empty()
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    entropy = torch.special.entr(p).sum(-1)  # -p log p, with 0 where p == 0
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    chosen = logp.gather(1, ids[:, None])[:, 0]
    top2 = p.topk(2, dim=-1)
    vocab = logp.shape[-1]
    # KL(U || p) = -log V - mean_j log p_j  (the self-certainty of Kang et al., 2025)
    kl_u = -math.log(vocab) - logp.mean(-1)
    return TokenStats(
        token_ids=tuple(int(t) for t in token_ids),
        tokens=tuple(tokens),
        logprobs=tuple(float(x) for x in chosen),
        entropies=tuple(float(x) for x in entropy),
        top_ids=tuple(int(x) for x in top2.indices[:, 0]),
        margins=tuple(float(x) for x in (top2.values[:, 0] - top2.values[:, 1])),
        kl_uniform=tuple(float(x) for x in kl_u),
        full_vocab=True,
    )


def _batched(entry: Any, n: int) -> Any:
    """A cache entry repeated ``n`` times along the batch axis (non-tensors pass through)."""
    if isinstance(entry, torch.Tensor) and entry.dim() == 4:
        return entry.expand(n, *entry.shape[1:]).contiguous()
    return entry


class TransformersBackend:
    """A ``GeneratorBackend`` over a transformers model folder (loaded lazily, once)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str,
        chat: bool = False,
        max_context_tokens: int = 2048,
        threads: int | None = None,
        dtype: str = "auto",
        prefix_cache_size: int = 4,
        min_prefix_tokens: int = 16,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name
        self.chat = chat
        self.max_context_tokens = max_context_tokens
        self.threads = threads
        self.dtype = resolve_dtype(dtype)  # a ValueError names the valid values
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.RLock()  # one forward pass at a time; guards the caches
        self._newline_ids: frozenset[int] = frozenset()
        self._stop_ids: frozenset[int] = frozenset()
        self.prefix_cache_size = prefix_cache_size
        self.min_prefix_tokens = min_prefix_tokens
        self._prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    # -- loading -------------------------------------------------------------------------
    def load(self) -> TransformersBackend:
        """Load the model and tokenizer now (otherwise the first call does it)."""
        with self._lock:
            if self._model is None:
                self._load()
        return self

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # The process-wide intra-op pool: the usable CPUs unless set (torch's own default
        # counts the host's cores, which oversubscribes a CPU-limited container).
        torch.set_num_threads(self.threads or usable_cpus())
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            model = AutoModelForCausalLM.from_pretrained(
                self.model_dir, dtype=getattr(torch, self.dtype)
            )
        except Exception as exc:  # a missing, truncated or corrupt folder, whatever the error
            raise BackendError(
                f"cannot load the model folder {self.model_dir}: {type(exc).__name__}: {exc}; "
                "run `guardrail prepare` to rebuild it"
            ) from exc
        model.eval()
        self._tokenizer = tokenizer
        self._model = model
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        newline = {i for i, piece in enumerate(vocab) if piece and ("\n" in piece or "Ċ" in piece)}
        self._newline_ids = frozenset(newline)
        stops = {tokenizer.eos_token_id}
        for special in ("<|im_end|>", "<end_of_turn>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                stops.add(tid)
        self._stop_ids = frozenset(t for t in stops if t is not None)

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer."""
        self.load()
        return self._tokenizer

    # -- the interface -------------------------------------------------------------------
    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """Apply the model's chat template and open the assistant turn."""
        rendered = self.tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        return str(rendered)

    def count_tokens(self, prompt: str) -> int:
        """How many tokens ``prompt`` takes (``max_context_tokens`` is the limit)."""
        return len(self.tokenizer(prompt, add_special_tokens=not self.chat)["input_ids"])

    def _encode_prompt(self, prompt: str) -> list[int]:
        # The chat template already contains the BOS token where the model wants one.
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=not self.chat)["input_ids"]
        if len(ids) > self.max_context_tokens:
            raise BackendError(
                f"the prompt has {len(ids)} tokens; this backend accepts at most "
                f"{self.max_context_tokens}: retrieve fewer or shorter passages"
            )
        return ids

    def _prefix_length(self, prompt: str, prompt_ids: list[int]) -> int:
        """How many leading tokens of ``prompt_ids`` form a cacheable head (0 for none)."""
        if self.prefix_cache_size <= 0:
            return 0
        cut = prompt.rfind("\n\n")
        if cut <= 0:
            return 0
        head: list[int] = self.tokenizer(prompt[: cut + 2], add_special_tokens=not self.chat)[
            "input_ids"
        ]
        # Only reuse a cache when the head tokenises identically inside the whole prompt.
        if len(head) < self.min_prefix_tokens or prompt_ids[: len(head)] != head:
            return 0
        if len(head) >= len(prompt_ids):
            return 0
        return len(head)

    def _run_prompt(self, prompt: str, prompt_ids: list[int], rows: int = 0) -> Any:
        """Forward pass over the prompt, reusing a cached head; returns the model output.

        ``rows == 0`` keeps the logits of the last position only (to generate from);
        ``rows == n`` keeps the n positions before the last (those that predicted the last n
        tokens, to score them). The LM head runs on those positions only.
        """
        model = self._model
        cut = self._prefix_length(prompt, prompt_ids)
        length = len(prompt_ids) - cut
        keep: int | torch.Tensor = torch.arange(length - rows - 1, length - 1) if rows else 1
        if cut == 0:
            return model(torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=keep)
        key = tuple(prompt_ids[:cut])
        layers = self._prefixes.get(key)
        if layers is None:
            cache = model(torch.tensor([list(key)]), use_cache=True, logits_to_keep=1).cache
            layers = tuple(cache)  # per layer: keys, values (and the sliding-window size)
            self._prefixes[key] = layers
            while len(self._prefixes) > self.prefix_cache_size:
                self._prefixes.popitem(last=False)
        else:
            self._prefixes.move_to_end(key)
        # A fresh cache over the stored tensors: the forward pass extends it by concatenation,
        # which leaves the stored tensors untouched (a deep copy would cost more than it saves).
        fresh = DynamicCache(ddp_cache_data=layers, config=model.config)
        return model(
            torch.tensor([prompt_ids[cut:]]),
            cache=fresh,
            use_cache=True,
            logits_to_keep=keep,
        )

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        """Greedy (temperature 0) or sampled decoding up to the first newline or EOS.

        ``probe``: also return the log-probability of this continuation right after the
        prompt (``Generation.probe_logprob``), read from the prompt's cache in one short
        extra pass.
        """
        self.load()
        with self._lock:
            checkpoint()  # a cancelled request waiting for the model stops here
            return self._generate(prompt, max_new_tokens, temperature, probe)

    @torch.inference_mode()
    def _probe_logprob(self, cache: Any, first_logits: torch.Tensor, probe: str) -> float | None:
        """log p(probe | prompt): the first token from the prompt's logits, the rest in one
        pass over a copy-free fork of the prompt's cache (the original is not extended)."""
        ids: list[int] = self._tokenizer(probe, add_special_tokens=False)["input_ids"]
        if not ids:
            return None
        total = float(torch.log_softmax(first_logits.float(), dim=-1)[ids[0]])
        if len(ids) > 1:
            fork = DynamicCache(ddp_cache_data=tuple(cache), config=self._model.config)
            out = self._model(
                torch.tensor([ids[:-1]]), cache=fork, use_cache=True, logits_to_keep=len(ids) - 1
            )
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)
            total += float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
        return total

    def _generate(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float,
        probe: str | None = None,
        *,
        stop_at_newline: bool = True,
    ) -> Generation:
        return self._decode(prompt, max_new_tokens, temperature, probe, stop_at_newline)[0]

    @torch.inference_mode()
    def _decode(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float,
        probe: str | None,
        stop_at_newline: bool,
    ) -> tuple[Generation, torch.Tensor | None]:
        """The decoding loop; also the logits rows that chose each token (None for none)."""
        start = time.perf_counter()
        prompt_ids = self._encode_prompt(prompt)
        model = self._model
        # Only the last position's logits are needed: the LM head over a 262k vocabulary is
        # the costliest part of a forward pass, so it is never run on the whole prompt.
        out = self._run_prompt(prompt, prompt_ids)
        cache = out.cache
        logits = out.logits[0, -1]
        probe_start = time.perf_counter()
        probe_logprob = self._probe_logprob(cache, logits, probe) if probe else None
        probe_seconds = time.perf_counter() - probe_start
        rows: list[torch.Tensor] = []
        ids: list[int] = []
        finish: FinishReason = "length"
        for _ in range(max_new_tokens):
            checkpoint()  # between decoding steps: a cancelled request stops decoding
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                tok = int(torch.multinomial(probs, 1))
            else:
                tok = int(torch.argmax(logits))
            if tok in self._stop_ids:
                finish = "eos"
                break
            if stop_at_newline and tok in self._newline_ids:
                finish = "newline"
                break
            rows.append(logits)
            ids.append(tok)
            out = model(torch.tensor([[tok]]), cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            logits = out.logits[0, -1]
        tokens = self._tokenizer.convert_ids_to_tokens(ids)
        stacked = torch.stack(rows) if rows else None
        stats = (
            token_stats_from_logits(stacked, ids, tokens)
            if stacked is not None
            else TokenStats.empty()
        )
        text = self._tokenizer.decode(ids, skip_special_tokens=True).strip()
        generation = Generation(
            text=text,
            stats=stats,
            prompt_tokens=len(prompt_ids),
            finish_reason=finish,
            seconds=time.perf_counter() - start,
            probe_logprob=probe_logprob,
            probe_seconds=probe_seconds,
        )
        return generation, stacked

    def sample(
        self, prompt: str, n: int, *, temperature: float = 1.0, max_new_tokens: int = 32
    ) -> list[str]:
        """``n`` sampled continuations of ``prompt`` (each up to its first newline or EOS),
        decoded as one batch over a single pass of the prompt."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if temperature <= 0:
            raise ValueError(f"sampling needs a temperature above 0, got {temperature}")
        self.load()
        with self._lock:
            checkpoint()
            return self._sample(prompt, n, temperature, max_new_tokens)

    @torch.inference_mode()
    def _sample(self, prompt: str, n: int, temperature: float, max_new_tokens: int) -> list[str]:
        prompt_ids = self._encode_prompt(prompt)
        model = self._model
        out = self._run_prompt(prompt, prompt_ids)
        layers = tuple(tuple(_batched(t, n) for t in layer) for layer in out.cache)
        cache = DynamicCache(ddp_cache_data=layers, config=model.config)
        logits = out.logits[:, -1].expand(n, -1)
        ids: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        stops = self._stop_ids | self._newline_ids
        for _ in range(max_new_tokens):
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            chosen = torch.multinomial(probs, 1)[:, 0].tolist()
            for i, tok in enumerate(chosen):
                if done[i]:
                    continue
                if tok in stops:
                    done[i] = True
                else:
                    ids[i].append(tok)
            if all(done):
                break
            out = model(
                torch.tensor(chosen)[:, None], cache=cache, use_cache=True, logits_to_keep=1
            )
            cache = out.cache
            logits = out.logits[:, -1]
        return [self._tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids]

    def score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        """One teacher-forced pass: statistics of ``continuation`` after ``prompt``."""
        self.load()
        with self._lock:
            checkpoint()
            return self._score(prompt, continuation)

    @torch.inference_mode()
    def _score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        prompt_ids = self._encode_prompt(prompt)
        if isinstance(continuation, str):
            cont_ids: list[int] = self._tokenizer(continuation, add_special_tokens=False)[
                "input_ids"
            ]
        else:
            cont_ids = [int(t) for t in continuation]
        if not cont_ids:
            return TokenStats.empty()
        # Position p predicts token p + 1: the rows that predicted the continuation are the n
        # positions before the last.
        n = len(cont_ids)
        rows = self._run_prompt(prompt, prompt_ids + cont_ids, rows=n).logits[0]
        tokens = self._tokenizer.convert_ids_to_tokens(cont_ids)
        return token_stats_from_logits(rows, cont_ids, tokens)

    # -- what an OpenAI-compatible model server needs ------------------------------------
    def top_logprobs(self, rows: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely tokens and their log-probabilities for each logits row."""
        logp = torch.log_softmax(rows.float(), dim=-1)
        top = logp.topk(k, dim=-1)
        return [
            list(
                zip(
                    self._tokenizer.convert_ids_to_tokens(ids.tolist()),
                    [float(v) for v in values],
                    strict=True,
                )
            )
            for ids, values in zip(top.indices, top.values, strict=True)
        ]

    def decode_token(self, token: str) -> str:
        """The text of one vocabulary piece as it appears in decoded output."""
        return str(self._tokenizer.convert_tokens_to_string([token]))

    def completion(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        stop_at_newline: bool = True,
    ) -> tuple[Generation, list[list[tuple[str, float]]]]:
        """``generate``, plus the ``top_k`` alternatives of every generated token."""
        self.load()
        with self._lock:
            # The decoding loop's own logits rows: no second pass over prompt and answer.
            generation, rows = self._decode(
                prompt, max_new_tokens, temperature, None, stop_at_newline
            )
            if not top_k or rows is None:
                return generation, []
            return generation, self.top_logprobs(rows, top_k)

    @torch.inference_mode()
    def prompt_logprobs(
        self, prompt: str, top_k: int, *, chunk: int = 64
    ) -> list[tuple[str, int, float | None, list[tuple[str, float]]]]:
        """For every token of ``prompt``: its text, character offset, log-probability given
        the tokens before it (``None`` for the first) and the ``top_k`` alternatives there.

        The LM head runs over the prompt in chunks of ``chunk`` positions, reduced at once,
        so memory stays small whatever the vocabulary.
        """
        self.load()
        with self._lock:
            ids: list[int] = self._tokenizer(prompt, add_special_tokens=not self.chat)["input_ids"]
            if len(ids) > self.max_context_tokens:
                raise BackendError(
                    f"the prompt has {len(ids)} tokens; at most {self.max_context_tokens}"
                )
            hidden = self._model.model(torch.tensor([ids])).last_hidden_state[0]
            pieces = self._tokenizer.convert_ids_to_tokens(ids)
            texts = [self.decode_token(p) for p in pieces]
            out: list[tuple[str, int, float | None, list[tuple[str, float]]]] = []
            offset = 0
            skip = len(self._tokenizer.decode(ids[:1], skip_special_tokens=True)) == 0
            chosen: list[float | None] = [None]  # the first token has no context
            alternatives: list[list[tuple[str, float]]] = [[]]
            for start in range(0, len(ids) - 1, chunk):
                block = hidden[start : min(start + chunk, len(ids) - 1)]
                logits = self._model.lm_head(block)
                if getattr(self._model.config, "final_logit_softcapping", None):
                    cap = self._model.config.final_logit_softcapping
                    logits = torch.tanh(logits / cap) * cap
                logp = torch.log_softmax(logits.float(), dim=-1)
                nxt = torch.tensor(ids[start + 1 : start + 1 + block.shape[0]])
                chosen.extend(float(v) for v in logp.gather(1, nxt[:, None])[:, 0])
                alternatives.extend(self.top_logprobs(logits, top_k) if top_k else [[]] * len(nxt))
            for index, text in enumerate(texts):
                if index == 0 and skip:
                    text = ""  # the BOS token has no text
                out.append((text, offset, chosen[index], alternatives[index]))
                offset += len(text)
            return out
