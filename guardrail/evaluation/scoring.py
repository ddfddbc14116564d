"""Labels: SQuAD token F1 and exact match, and whether a response is correct.

A response is correct when

- the model answered, the question is answerable, and the answer's SQuAD-normalised token F1
  against some gold answer is at least ``F1_THRESHOLD`` (0.5); or
- the model abstained (or the system did not answer) and the question is unanswerable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from guardrail.text import normalize_answer

F1_THRESHOLD = 0.5


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between two strings (after normalisation)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best token F1 against any gold answer (0 when there is none)."""
    return max((token_f1(prediction, a) for a in answers), default=0.0)


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the normalised prediction equals some normalised gold answer."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def answer_correct(prediction: str, answers: Sequence[str], unanswerable: bool) -> bool:
    """Whether giving this answer is right: never for an unanswerable question."""
    return not unanswerable and best_f1(prediction, answers) >= F1_THRESHOLD


def outcome_correct(
    *, answered: bool, prediction: str, answers: Sequence[str], unanswerable: bool
) -> bool:
    """Whether a response is right: a correct answer, or not answering an unanswerable one."""
    if not answered:
        return unanswerable
    return answer_correct(prediction, answers, unanswerable)
