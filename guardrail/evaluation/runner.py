"""Running a model over evaluation items, with every result cached.

One ``Record`` per (item, model, prompt, retrieval): the answer, whether the model abstained,
every signal, the token statistics and the timings, exactly as the pipeline's ``assess`` step
measured them (the evaluation goes through the same code that serves users). Records are
appended to a JSONL cache as they are made, keyed by a hash of the model, the prompt (a
rendering of the prompt builder), the generation settings, the question and the passages'
text, so an interrupted run resumes where it stopped and recalibrating or re-scoring never
reruns the model. Sampling-baseline answers and the answers of escalation targets are
cached the same way, each in a file of their own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from guardrail.assessment import is_abstention
from guardrail.backends.base import GeneratorBackend
from guardrail.backends.openai_chat import OpenAIChatBackend
from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.scoring import answer_correct, best_f1, exact_match, outcome_correct
from guardrail.judge import PROBE_SIGNALS, Assessed, Judge
from guardrail.pipeline import Guardrail
from guardrail.prompts import prompt_for
from guardrail.signals import compute_text_signals
from guardrail.text import normalize_answer
from guardrail.types import Generation, TokenStats
from retrievers import Passage

CACHE_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One model's measured answer to one evaluation item."""

    key: str
    item_id: str
    question: str
    answers: tuple[str, ...]
    unanswerable: bool
    answer: str
    abstained: bool
    signals: dict[str, float | None]
    timings: dict[str, float]
    passage_ids: tuple[str, ...]
    passage_scores: tuple[float | None, ...]
    gold_retrieved: bool | None = None
    flags: tuple[str, ...] = ()
    samples: tuple[str, ...] | None = None
    sample_seconds: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_correct(self) -> bool:
        """Whether the answer, were it given, would be right."""
        return not self.abstained and answer_correct(self.answer, self.answers, self.unanswerable)

    @property
    def outcome_correct(self) -> bool:
        """Whether the model's own response (answer or abstention) is right."""
        return outcome_correct(
            answered=not self.abstained,
            prediction=self.answer,
            answers=self.answers,
            unanswerable=self.unanswerable,
        )

    @property
    def f1(self) -> float:
        """Token F1 of the answer (0 for an abstention or an unanswerable question)."""
        if self.abstained or self.unanswerable:
            return 0.0
        return best_f1(self.answer, self.answers)

    @property
    def em(self) -> bool:
        """Exact match of the answer."""
        return (
            not self.abstained and not self.unanswerable and exact_match(self.answer, self.answers)
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """The inverse of ``to_json``."""
        data = dict(data)
        for name in ("answers", "passage_ids", "passage_scores", "flags"):
            data[name] = tuple(data[name])
        if data.get("samples") is not None:
            data["samples"] = tuple(data["samples"])
        return cls(**data)


def _stats_json(stats: TokenStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {
        "tokens": list(stats.tokens),
        "logprobs": [round(x, 5) for x in stats.logprobs],
        "entropies": [round(x, 5) for x in stats.entropies],
    }


class RecordCache:
    """Append-only JSONL files of records, of sampling-baseline answers and of the answers
    of escalation targets."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.records_path = folder / "records.jsonl"
        self.samples_path = folder / "samples.jsonl"
        self.escalations_path = folder / "escalations.jsonl"
        self._records = self._read(self.records_path)
        self._samples = self._read(self.samples_path)
        self._escalations = self._read(self.escalations_path)

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
                if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                    found[data["key"]] = data
        return found

    def _append(self, path: Path, data: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")

    def _put(
        self, store: dict[str, dict[str, Any]], path: Path, key: str, data: dict[str, Any]
    ) -> None:
        data = {"version": CACHE_VERSION, "key": key, **data}
        store[key] = data
        self._append(path, data)

    def record(self, key: str) -> dict[str, Any] | None:
        """The cached record for ``key``, if any."""
        return self._records.get(key)

    def put_record(self, key: str, data: dict[str, Any]) -> None:
        """Store a record."""
        self._put(self._records, self.records_path, key, data)

    def samples(self, key: str) -> dict[str, Any] | None:
        """The cached sampling-baseline answers for ``key``, if any."""
        return self._samples.get(key)

    def put_samples(self, key: str, data: dict[str, Any]) -> None:
        """Store sampling-baseline answers."""
        self._put(self._samples, self.samples_path, key, data)

    def escalation(self, key: str) -> dict[str, Any] | None:
        """The cached answer of an escalation target for ``key``, if any."""
        return self._escalations.get(key)

    def put_escalation(self, key: str, data: dict[str, Any]) -> None:
        """Store an escalation target's answer."""
        self._put(self._escalations, self.escalations_path, key, data)


def _without_probe(data: dict[str, Any]) -> dict[str, Any]:
    """A cached record as a run without the abstention probe would have made it."""
    timings = {k: v for k, v in data["timings"].items() if k != "abstain_probe"}
    signals = {**data["signals"], **dict.fromkeys(PROBE_SIGNALS)}
    return {**data, "signals": signals, "timings": timings}


def _key(settings: dict[str, Any], question: str, passages: Sequence[Passage]) -> str:
    payload = json.dumps(
        {
            **settings,
            "question": question,
            "passages": [[p.id, hashlib.sha1(p.text.encode()).hexdigest()] for p in passages],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def prompt_fingerprint(backend: GeneratorBackend, max_passage_words: int) -> str:
    """A short hash of how the prompt builder renders a fixed question and passage."""
    prompts = prompt_for(backend, max_passage_words)
    probe = Passage(id="p", text="A passage.", source="s")
    text = "\x1e".join(
        (prompts.contextual("A question?", [probe]), prompts.parametric("A question?"))
    )
    return hashlib.sha256((text + prompts.abstain_probe).encode()).hexdigest()[:16]


def sampling_agreement(greedy: str, samples: Sequence[str], abstained: bool) -> float:
    """Share of samples in the greedy answer's cluster (normalised exact match; all
    abstentions form one cluster)."""
    if not samples:
        return 0.0
    if abstained:
        return sum(is_abstention(s) for s in samples) / len(samples)
    target = normalize_answer(greedy)
    return sum(normalize_answer(s) == target for s in samples) / len(samples)


def stored_assessed(
    backend: GeneratorBackend,
    answer: str,
    abstained: bool,
    signals: Mapping[str, float | None],
    flags: Mapping[str, str],
    timings: Mapping[str, float],
    judge: Judge,
) -> Assessed:
    """An answer measured earlier (no token statistics kept), with ``judge``'s confidence."""
    return Assessed(
        backend=backend,
        generation=Generation(
            text=answer, stats=TokenStats.empty(), prompt_tokens=0, finish_reason="newline"
        ),
        parametric=None,
        answer=answer,
        abstained=abstained,
        signals=signals,
        flags=flags,
        confidence=judge.confidence(signals, abstained=abstained),
        timings=timings,
    )


@dataclass
class EvalRunner:
    """Runs a ``Guardrail``'s generator over items, reading and filling the cache."""

    guardrail: Guardrail
    cache: RecordCache
    progress: bool = True

    def __post_init__(self) -> None:
        self.settings = self._settings(self.guardrail.backend)
        self.judge = self.guardrail.judge()
        """The base policy's judge, fixed for the run: it measures the records (and says
        whether they carry ``abstain_logprob``)."""

    def _settings(self, backend: GeneratorBackend) -> dict[str, Any]:
        """What, besides question and passages, decides ``backend``'s answer (cache keys)."""
        config = self.guardrail.config
        settings: dict[str, Any] = {
            "model": backend.name,
            "dtype": config.resolved_dtype(),
            "prompt": prompt_fingerprint(backend, config.max_passage_words),
            "max_new_tokens": config.max_new_tokens,
            "max_passage_words": config.max_passage_words,
        }
        # Proxy mode's route and guard decide the signals too (absent otherwise, so that the
        # embedded model's cached runs keep their keys).
        if isinstance(backend, OpenAIChatBackend):
            settings["route"] = {"api": "chat", "logprobs": backend.logprobs}
        if backend is self.guardrail.backend and self.guardrail.guard is not None:
            settings["guard"] = self.guardrail.guard.name
        return settings

    def _text_signals(
        self, question: str, answer: str, passages: Sequence[Passage]
    ) -> dict[str, float | None]:
        return compute_text_signals(
            question, answer, passages, self.guardrail.similarity, self.guardrail.verify
        )

    def passages_for(self, item: EvalItem) -> tuple[list[Passage], float]:
        """The item's own passages, or the retrieved top-k, and the retrieval seconds."""
        if item.passages is not None:
            return list(item.passages), 0.0
        start = time.perf_counter()
        found = self.guardrail.retrieve(item.question)
        return found, time.perf_counter() - start

    def key(self, item: EvalItem, passages: Sequence[Passage]) -> str:
        """The cache key of an item with these passages under this runner's settings."""
        return _key(self.settings, item.question, passages)

    def assess_target(
        self, backend: GeneratorBackend, question: str, passages: Sequence[Passage], judge: Judge
    ) -> Assessed:
        """An escalation target's assessed answer, from the cache when this target already
        answered this question with these passages: the target then generates nothing (and a
        local model, which loads its weights on first use, is not even loaded). The
        confidence is always recomputed by ``judge``."""
        settings = {**self._settings(backend), "escalation": True, "abstain_probe": judge.probe}
        key = _key(settings, question, passages)
        data = self.cache.escalation(key)
        if data is None:
            assessed = self.guardrail.assess(backend, question, passages, judge)
            parametric = assessed.parametric
            self.cache.put_escalation(
                key,
                {
                    "model": backend.name,
                    "answer": assessed.answer,
                    "abstained": assessed.abstained,
                    "signals": dict(assessed.signals),
                    "parametric_first_entropy": (
                        parametric.entropies[0] if parametric and parametric.entropies else None
                    ),
                    "timings": dict(assessed.timings),
                },
            )
            return assessed
        # Text signals and flags are recomputed, as for the records: a change to either
        # applies to cached answers too.
        signals = {
            **data["signals"],
            **self._text_signals(question, data["answer"], passages),
        }
        flags = self.guardrail.flag_rules.flags(
            abstained=data["abstained"],
            signals=signals,
            parametric_first_entropy=data.get("parametric_first_entropy"),
            has_passages=bool(passages),
        )
        return stored_assessed(
            backend, data["answer"], data["abstained"], signals, flags, data["timings"], judge
        )

    def assessed(self, record: Record, judge: Judge) -> Assessed:
        """The generator's assessed answer as a record stored it, with ``judge``'s confidence
        (the replay's first answer)."""
        flags = dict.fromkeys(record.flags, "recorded")
        return stored_assessed(
            self.guardrail.backend,
            record.answer,
            record.abstained,
            record.signals,
            flags,
            record.timings,
            judge,
        )

    def run(
        self,
        items: Iterable[EvalItem],
        *,
        samples: int = 0,
        temperature: float = 1.0,
        label: str = "evaluating",
    ) -> list[Record]:
        """A record per item (from the cache where possible), with ``samples`` sampled
        answers each for the sampling-consistency baseline when ``samples`` > 0."""
        items = list(items)
        records: list[Record] = []
        bar = tqdm(items, desc=label, unit="q", disable=not self.progress, dynamic_ncols=True)
        for item in bar:
            passages, retrieve_seconds = self.passages_for(item)
            key = self.key(item, passages)
            data = self.cache.record(key)
            # A record made without the abstention probe cannot serve a run that needs it; one
            # made with it serves a run that does not, once the probe's part is taken out.
            if data is None or (self.judge.probe and "abstain_probe" not in data["timings"]):
                data = self._measure(item, passages, retrieve_seconds)
                self.cache.put_record(key, data)
            elif not self.judge.probe:
                data = _without_probe(data)
            # Text-only signals are recomputed (and timed) from the stored answer: adding or
            # changing one never reruns the model.
            start = time.perf_counter()
            text_signals = self._text_signals(item.question, data["answer"], passages)
            data = {
                **data,
                "signals": {**data["signals"], **text_signals},
                "timings": {**data["timings"], "signals": time.perf_counter() - start},
            }
            record = self._record(key, item, data)
            if samples > 0:
                record = self._with_samples(record, item, passages, samples, temperature)
            records.append(record)
        return records

    def _measure(
        self, item: EvalItem, passages: Sequence[Passage], retrieve_seconds: float
    ) -> dict[str, Any]:
        guardrail = self.guardrail
        assessed = guardrail.assess(
            guardrail.backend, item.question, passages, self.judge, guardrail.guard
        )
        gold = None
        if item.open_retrieval and item.meta.get("gold_passage"):
            wanted = item.meta["gold_passage"]
            gold = any(p.id == wanted or p.id.startswith(wanted + "#") for p in passages)
        return {
            "answer": assessed.answer,
            "abstained": assessed.abstained,
            "signals": dict(assessed.signals),
            "timings": {"retrieve": retrieve_seconds, **assessed.timings},
            "passage_ids": [p.id for p in passages],
            "passage_scores": [p.score for p in passages],
            "gold_retrieved": gold,
            "flags": sorted(assessed.flags),
            "stats": {
                "contextual": _stats_json(assessed.generation.stats),
                "parametric": _stats_json(assessed.parametric),
            },
        }

    def _record(self, key: str, item: EvalItem, data: dict[str, Any]) -> Record:
        return Record(
            key=key,
            item_id=item.id,
            question=item.question,
            answers=item.answers,
            unanswerable=item.unanswerable,
            answer=data["answer"],
            abstained=data["abstained"],
            signals=data["signals"],
            timings=data["timings"],
            passage_ids=tuple(data["passage_ids"]),
            passage_scores=tuple(data["passage_scores"]),
            gold_retrieved=data.get("gold_retrieved"),
            flags=tuple(data.get("flags", ())),
            stats=data.get("stats") or {},
        )

    def _with_samples(
        self,
        record: Record,
        item: EvalItem,
        passages: Sequence[Passage],
        n: int,
        temperature: float,
    ) -> Record:
        key = f"{record.key}:{n}:{temperature}"
        data = self.cache.samples(key)
        if data is None:
            backend = self.guardrail.backend
            prompts = prompt_for(backend, self.guardrail.config.max_passage_words)
            prompt = prompts.contextual(item.question, passages)
            start = time.perf_counter()
            sampler = getattr(backend, "sample", None)
            max_new = self.guardrail.config.max_new_tokens
            if callable(sampler):
                answers = list(sampler(prompt, n, temperature=temperature, max_new_tokens=max_new))
            else:
                answers = [
                    backend.generate(prompt, max_new_tokens=max_new, temperature=temperature).text
                    for _ in range(n)
                ]
            data = {"samples": answers, "seconds": time.perf_counter() - start}
            self.cache.put_samples(key, data)
        return Record(
            **{
                **record.__dict__,
                "samples": tuple(data["samples"]),
                "sample_seconds": float(data["seconds"]),
            }
        )
