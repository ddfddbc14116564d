"""From signals to an assessment: flags and the confidence score.

Flags are facts about one answer that policies can name:

- ``model_abstained``: the model's own answer is an abstention ("unanswerable", "I don't
  know", an empty line, or a sentence that declines: "The passages do not mention ...").
  That is an outcome, not an answer: token signals read it as high
  confidence whether or not the documents hold the answer, so it is never scored as one.
- ``knowledge_conflict``: the passages pull the model away from what it would say without
  them. It fires on Confidence Gain (mean ``CG_t`` below ``cg_threshold``: the passages made
  the model *less* certain) or on parametric disagreement (the model, without the passages,
  is fairly sure of a different first token: parametric entropy below
  ``parametric_entropy_threshold`` nats and agreement below ``agreement_threshold``). Both
  conditions are needed: a model that copies a contradicting passage confidently shows a
  positive gain but low agreement, and a model that simply did not know the fact shows low
  agreement but a high parametric entropy, which is no conflict.
- ``no_passages``: retrieval returned nothing.
- ``passages_cut``: the passages did not all fit the model's context; the lowest-ranked were
  left out, and the answer, the signals and the citations use the ones that fit.
- ``injected_answer``: the answer appears in the passages only inside text that reads like a
  prompt (a ``Question:``/``Answer:`` frame, a chat role or control token, an instruction to
  the model), nowhere in the documents' own statements: it was probably planted
  (``guardrail.injection``). The bundled policies defer on it.

The confidence here is the fixed, documented heuristic used until a calibrator is fitted:
the geometric-mean probability of the answer tokens, halved when the answer text does not
occur in any passage, and 0 for an abstention.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from guardrail.text import normalize_answer

FLAG_NAMES: frozenset[str] = frozenset(
    {"model_abstained", "knowledge_conflict", "no_passages", "passages_cut", "injected_answer"}
)

_ABSTENTIONS = frozenset(
    {
        "",
        "unanswerable",
        "unknown",
        "i dont know",
        "i do not know",
        "no answer",
        "not mentioned",
        "not stated",
        "cannot be determined",
        "not enough information",
        "na",
    }
)


# How chat models decline in a sentence instead of the one word their prompt asks for ("The
# provided passages do not mention ...", "I cannot determine this from the context."). Written
# from the shapes such refusals take, on SQuAD-normalised text (lower case, no punctuation, no
# articles), and anchored at the start of the answer, where a refusal says what it is; an
# answer that merely contains "not" does not match.
_SOURCE = (
    r"(?:provided |given |retrieved |supplied |above |these |this |those )?"
    r"(?:passages?|documents?|context|texts?|sources?|excerpts?|articles?|information)"
    r"(?: (?:provided|given|above))?"
)
_SAYS = (
    r"(?:mention|say|state|specify|contain|include|provide|give|answer|discuss|address|cover|"
    r"indicate|describe|tell|reveal|have|offer|list|name|identify|explain|show)"
)
_SUBJECT = (
    r"(?:(?:this|that|such|requested|specific|exact) )?"
    r"(?:(?:information|answer|question|details?|date|it|this|that) )?"
)
_ABSTENTION_PATTERNS = re.compile(
    r"^(?:(?:im |i am )?sorry (?:but )?|unfortunately "
    rf"|based on {_SOURCE} |according to {_SOURCE} )?(?:"
    rf"{_SOURCE} (?:do|does|did) not {_SAYS}\b"
    rf"|{_SOURCE} (?:dont|doesnt|didnt) {_SAYS}\b"
    rf"|{_SOURCE} (?:has|have|contains?|includes?|provides?|gives?) no\b"
    r"|there (?:is|are) no (?:information|mention|answer|data|indication|reference|details?)\b"
    rf"|{_SUBJECT}(?:is |was |are )?not "
    r"(?:mentioned|stated|specified|given|provided|found|available|addressed|covered|included|"
    r"discussed|answerable|known|clear|possible to (?:determine|answer|tell|say)"
    rf"|in {_SOURCE})\b"
    rf"|{_SUBJECT}(?:cannot|can not|cant|could not) be "
    r"(?:determined|answered|found|known|inferred|established|identified|confirmed)\b"
    r"|i (?:cannot|can not|cant|could not|couldnt|am unable to|m unable to|am not able to) "
    r"(?:answer|determine|find|tell|say|provide|know|identify|confirm|locate)\b"
    r"|i (?:do not|dont) (?:know|have (?:enough |any |that |this )?information)\b"
    r"|(?:insufficient|not enough|no) (?:information|data|context|details?)\b"
    r"|no (?:answer|mention)\b"
    r")"
)


def is_abstention(answer: str) -> bool:
    """Whether the model's answer says it has no answer: one of the short forms
    ("unanswerable", "I don't know", an empty line) or a sentence that declines ("The
    passages do not mention ...", "This cannot be determined from the context.")."""
    normalized = normalize_answer(answer)
    return (
        normalized in _ABSTENTIONS
        or normalized.startswith("unanswerable")
        or _ABSTENTION_PATTERNS.match(normalized) is not None
    )


@dataclass(frozen=True)
class FlagRules:
    """Fixed thresholds that raise flags (documented in the module docstring)."""

    cg_threshold: float = -1.0
    agreement_threshold: float = 0.5
    parametric_entropy_threshold: float = 2.0

    def flags(
        self,
        *,
        abstained: bool,
        signals: Mapping[str, float | None],
        parametric_first_entropy: float | None,
        has_passages: bool,
    ) -> dict[str, str]:
        """The raised flags, each with a sentence saying what raised it."""
        raised: dict[str, str] = {}
        if not has_passages:
            raised["no_passages"] = "retrieval returned no passages"
        if abstained:
            raised["model_abstained"] = "the model answered that it cannot answer"
            return raised
        why: list[str] = []
        cg = signals.get("cg_mean")
        if cg is not None and cg < self.cg_threshold:
            why.append(
                f"Confidence Gain {cg:.2f} < {self.cg_threshold:g} (the passages made "
                "the model less certain)"
            )
        agreement = signals.get("parametric_agreement")
        if (
            agreement is not None
            and parametric_first_entropy is not None
            and agreement < self.agreement_threshold
            and parametric_first_entropy < self.parametric_entropy_threshold
        ):
            why.append(
                f"parametric agreement {agreement:.2f} < {self.agreement_threshold:g} while the "
                f"model without passages is fairly sure of another answer (entropy "
                f"{parametric_first_entropy:.2f} < {self.parametric_entropy_threshold:g} nats)"
            )
        if why:
            raised["knowledge_conflict"] = "; ".join(why)
        return raised


HEURISTIC_METHOD = (
    "heuristic-v1: geometric-mean answer-token probability, halved when the answer is not "
    "found in the passages, 0 for an abstention (uncalibrated)"
)


@dataclass(frozen=True)
class HeuristicConfidence:
    """The fixed confidence combination used until a calibrator exists."""

    method: str = field(default=HEURISTIC_METHOD)

    def confidence(self, signals: Mapping[str, float | None], *, abstained: bool) -> float:
        """A score in [0, 1]; higher means more likely correct."""
        mean_logprob = signals.get("mean_logprob")
        if abstained or mean_logprob is None:
            return 0.0
        found = signals.get("answer_in_passages")
        support = 1.0 if found else 0.5
        return max(0.0, min(1.0, math.exp(mean_logprob) * support))
