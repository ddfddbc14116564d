"""Evaluation sets: loaders that turn each source into ``EvalItem``s, and seeded splits.

Every loader reads the files where they are (``data_dir``, by default ``../shared/data``);
nothing is copied into the repository. An item carries its gold answers, whether it is
unanswerable (then the only correct outcome is not to answer), and either its own passages
(gold or given evidence) or ``None`` for open retrieval over an index.

Splits are by *group* (the source paragraph for SQuAD) so that a calibration split and a test
split never share a paragraph: a calibrator must generalise to documents it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail.errors import GuardrailError
from guardrail.jsonl import iter_objects
from guardrail.text import negated
from retrievers import Passage


class DatasetError(GuardrailError):
    """A dataset name, setting, split or file that cannot be used."""


@dataclass(frozen=True)
class EvalItem:
    """One labelled question."""

    id: str
    question: str
    answers: tuple[str, ...]
    unanswerable: bool
    passages: tuple[Passage, ...] | None = None
    group: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def open_retrieval(self) -> bool:
        """Whether passages come from an index rather than from the item."""
        return self.passages is None


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset with its settings and a loader."""

    name: str
    settings: tuple[str, ...]
    description: str
    load: Callable[[Path, str], list[EvalItem]]


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        raise DatasetError(f"{path} does not exist; set --data-dir to the folder of the sets")
    yield from iter_objects(path, DatasetError)


def _json(path: Path) -> Any:
    if not path.exists():
        raise DatasetError(f"{path} does not exist; set --data-dir to the folder of the sets")
    return json.loads(path.read_text(encoding="utf-8"))


def _digest(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:12]


def _passage(pid: str, text: str, source: str, title: str = "") -> Passage:
    return Passage(id=pid, text=text, source=source, title=title)


# -- loaders ---------------------------------------------------------------------------------
def load_squad2(data_dir: Path, setting: str) -> list[EvalItem]:
    """SQuAD 2.0 dev: ``gold`` gives each question its paragraph; ``open`` retrieves."""
    return _squad(data_dir / "squad2_dev", setting, "squad2")


def load_squad11(data_dir: Path, setting: str) -> list[EvalItem]:
    """SQuAD 1.1 dev (every question answerable): ``gold`` paragraph or ``open`` retrieval."""
    return _squad(data_dir / "squad11_dev", setting, "squad11")


def _squad(folder: Path, setting: str, prefix: str) -> list[EvalItem]:
    contexts = {c["context_id"]: c for c in _jsonl(folder / "contexts.jsonl")}
    items = []
    for q in _jsonl(folder / "questions.jsonl"):
        ctx = contexts[q["context_id"]]
        passages = (
            (_passage(f"{prefix}:{ctx['context_id']}", ctx["text"], folder.name, ctx["title"]),)
            if setting == "gold"
            else None
        )
        items.append(
            EvalItem(
                id=str(q["id"]),
                question=q["question"],
                answers=tuple(q["answers"]),
                unanswerable=bool(q.get("is_impossible", False)),
                passages=passages,
                group=str(q["context_id"]),
                meta={"gold_passage": str(q["context_id"])},
            )
        )
    return items


def load_selfaware(data_dir: Path, setting: str) -> list[EvalItem]:
    """SelfAware: unknowable questions among answerable ones (``open`` or ``closed`` book)."""
    data = _json(data_dir / "selfaware" / "SelfAware.json")
    items = []
    for q in data["example"]:
        items.append(
            EvalItem(
                id=str(q["question_id"]),
                question=q["question"],
                answers=tuple(q["answer"] or ()),
                unanswerable=not q["answerable"],
                passages=None if setting == "open" else (),
                group=str(q["question_id"]),
                meta={"source": str(q.get("source", ""))},
            )
        )
    return items


def load_nq_open(data_dir: Path, setting: str) -> list[EvalItem]:
    """NQ-open dev with open retrieval over the index (most answers are not in the demo
    corpus: a correct system mostly abstains)."""
    items = []
    for q in _jsonl(data_dir / "nq_open" / "NQ-open.dev.jsonl"):
        qid = _digest(q["question"])
        items.append(
            EvalItem(
                id=qid,
                question=q["question"],
                answers=tuple(q["answer"]),
                unanswerable=False,
                passages=None if setting == "open" else (),
                group=qid,
            )
        )
    return items


def polar_answers(question: str, memory: str, counter: str) -> tuple[str | None, str | None]:
    """The answer, "yes" or "no", that each of two opposite statements gives to a yes/no
    question, when the question holds no negation and exactly one statement does (that one
    says "no"); (None, None) when the statements do not settle it that way."""
    if negated(question) or negated(memory) == negated(counter):
        return None, None
    return ("no", "yes") if negated(memory) else ("yes", "no")


def load_conflictqa(data_dir: Path, setting: str) -> list[EvalItem]:
    """ConflictQA (StrategyQA, llama2-7b): each question with the evidence aligned with the
    model's memory (``parametric``) or with the counter-memory (``counter``); correct means
    agreeing with the evidence given. The questions are yes/no questions and the set's answers
    whole statements ("The moon is not made of cheese."), which a short answer never matches
    at F1 0.5: where ``polar_answers`` settles it (92% of the set), "yes" or "no" is a gold
    answer too."""
    path = data_dir / "conflictqa" / "conflictQA-strategyQA-llama2-7b.json"
    items = []
    for q in _jsonl(path):
        key = (
            "parametric_memory_aligned_evidence"
            if setting == "parametric"
            else ("counter_memory_aligned_evidence")
        )
        memory, counter = str(q["memory_answer"]), str(q["counter_answer"])
        polar = polar_answers(q["question"], memory, counter)
        answer, stance = (memory, polar[0]) if setting == "parametric" else (counter, polar[1])
        qid = _digest(q["question"])
        items.append(
            EvalItem(
                id=qid,
                question=q["question"],
                answers=(answer,) if stance is None else (answer, stance),
                unanswerable=False,
                passages=(_passage(f"conflictqa:{qid}:{setting}", str(q[key]), "conflictqa"),),
                group=qid,
            )
        )
    return items


def load_ramdocs(data_dir: Path, setting: str) -> list[EvalItem]:
    """RAMDocs: each question with its retrieved documents (correct, misinformation, noise)."""
    items = []
    for number, q in enumerate(_jsonl(data_dir / "ramdocs" / "RAMDocs_test.jsonl")):
        qid = _digest(q["question"], str(number))
        docs = tuple(
            _passage(f"ramdocs:{qid}:{i}", d["text"], f"ramdocs:{d['type']}")
            for i, d in enumerate(q["documents"])
        )
        items.append(
            EvalItem(
                id=qid,
                question=q["question"],
                answers=tuple(q["gold_answers"]),
                unanswerable=False,
                passages=docs,
                group=qid,
            )
        )
    return items


def load_hotpotqa(data_dir: Path, setting: str) -> list[EvalItem]:
    """HotpotQA sample: ``gold`` gives the two gold paragraphs and one distractor;
    ``no-gold`` gives three distractors only, and the question counts as unanswerable."""
    data = _json(data_dir / "hotpotqa_sample" / "camera_ready_nd8_dev_sample100.json")
    items = []
    for q in data:
        qid = str(q["_id"])
        gold = (
            _passage(f"hotpot:{qid}:a", " ".join(q["para_a"]), "hotpotqa", q["title_a"]),
            _passage(f"hotpot:{qid}:b", " ".join(q["para_b"]), "hotpotqa", q["title_b"]),
        )
        # Each distractor is [title, sentences], followed in the released sample by its
        # retrieval score, which is not used.
        distractors = tuple(
            _passage(f"hotpot:{qid}:d{i}", " ".join(entry[1]), "hotpotqa", entry[0])
            for i, entry in enumerate(q["distractors"])
        )
        passages = (*gold, *distractors[:1]) if setting == "gold" else distractors[:3]
        items.append(
            EvalItem(
                id=qid,
                question=q["question"],
                answers=(str(q["answer"]),),
                unanswerable=setting != "gold",
                passages=passages,
                group=qid,
            )
        )
    return items


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("squad2", ("gold", "open"), "SQuAD 2.0 dev, half unanswerable", load_squad2),
        DatasetSpec("squad11", ("gold", "open"), "SQuAD 1.1 dev, all answerable", load_squad11),
        DatasetSpec(
            "selfaware", ("open", "closed"), "SelfAware unknowable questions", load_selfaware
        ),
        DatasetSpec("nq_open", ("open", "closed"), "NQ-open dev, open retrieval", load_nq_open),
        DatasetSpec(
            "conflictqa",
            ("parametric", "counter"),
            "ConflictQA knowledge conflicts",
            load_conflictqa,
        ),
        DatasetSpec("ramdocs", ("given",), "RAMDocs noisy and misleading documents", load_ramdocs),
        DatasetSpec("hotpotqa", ("gold", "no-gold"), "HotpotQA dev sample", load_hotpotqa),
    )
}


def load_user_jsonl(path: Path) -> list[EvalItem]:
    """The user's own labelled JSONL: one object per line with ``question`` and either
    ``answers`` (a list of strings) or ``"unanswerable": true``; optional ``id`` and
    ``passages`` (a list of strings; without it, passages are retrieved from the index)."""
    items = []
    for number, record in enumerate(_jsonl(path), start=1):
        where = f"{path}:{number}"
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{where}: 'question' must be a non-empty string")
        answers = record.get("answers", [])
        unanswerable = record.get("unanswerable", False)
        if not isinstance(unanswerable, bool):
            raise DatasetError(f"{where}: 'unanswerable' must be true or false")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DatasetError(f"{where}: 'answers' must be a list of strings")
        if not answers and not unanswerable:
            raise DatasetError(
                f"{where}: give 'answers' (a list of strings) or \"unanswerable\": true"
            )
        raw = record.get("passages")
        if raw is not None and (
            not isinstance(raw, list) or not all(isinstance(p, str) for p in raw)
        ):
            raise DatasetError(f"{where}: 'passages' must be a list of strings")
        qid = str(record.get("id", number))
        passages = (
            tuple(_passage(f"{qid}:{i}", text, path.name) for i, text in enumerate(raw))
            if raw is not None
            else None
        )
        items.append(
            EvalItem(qid, question.strip(), tuple(answers), unanswerable, passages, group=qid)
        )
    if not items:
        raise DatasetError(f"{path} holds no questions")
    return items


def load_items(name: str, setting: str | None, data_dir: Path) -> tuple[list[EvalItem], str]:
    """Items of a named set (or of a JSONL file given by path) and the setting used."""
    if name.endswith(".jsonl") or Path(name).is_file():
        return load_user_jsonl(Path(name)), "given"
    spec = DATASETS.get(name)
    if spec is None:
        raise DatasetError(
            f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, or a path to a .jsonl file"
        )
    setting = setting or spec.settings[0]
    if setting not in spec.settings:
        raise DatasetError(
            f"dataset {name} has no setting {setting!r}; valid: {', '.join(spec.settings)}"
        )
    return spec.load(data_dir, setting), setting


SPLITS = ("calibrate", "test")


def split_items(
    items: Sequence[EvalItem], split: str, n: int, seed: int, *, balance: bool = True
) -> list[EvalItem]:
    """A seeded draw of ``n`` items from one of two disjoint halves of the groups.

    Groups (paragraphs) are shuffled with ``seed`` and cut in two: ``calibrate`` draws from
    the first half, ``test`` from the second, so the two never share a group. With
    ``balance``, half of the draw is unanswerable when the set has both kinds.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    rng = random.Random(seed)
    groups = sorted({item.group or item.id for item in items})
    rng.shuffle(groups)
    half = set(groups[: len(groups) // 2] if split == "calibrate" else groups[len(groups) // 2 :])
    pool = [item for item in items if (item.group or item.id) in half]
    rng.shuffle(pool)
    unanswerable = [item for item in pool if item.unanswerable]
    answerable = [item for item in pool if not item.unanswerable]
    if balance and unanswerable and answerable:
        k = n // 2
        if len(unanswerable) < n - k or len(answerable) < k:
            raise DatasetError(
                f"the {split} half has {len(answerable)} answerable and {len(unanswerable)} "
                f"unanswerable questions; cannot draw {n} balanced"
            )
        chosen = answerable[:k] + unanswerable[: n - k]
        rng.shuffle(chosen)
        return chosen
    if len(pool) < n:
        raise DatasetError(f"the {split} half has only {len(pool)} questions; asked for {n}")
    return pool[:n]
