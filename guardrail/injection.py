"""Passages are data: text inside them that tries to act as a prompt is defused and watched.

Two defences, because neither is enough alone:

1. **Neutralised in every prompt** (:func:`neutralise`, applied by
   ``guardrail.prompts.passage_as_data``): a passage cannot open a ``Question:``/``Answer:``
   turn of the few-shot frame (the colon of such a marker becomes `` -``, and line breaks
   are folded), and chat-template control tokens written into a passage (``<|im_start|>``,
   ``<start_of_turn>``, ...) lose their angle brackets, so the tokenizer reads them as words
   rather than as the special tokens that open a new turn.
2. **Flagged when it worked** (:func:`injected_answer`): a small model may still copy the
   answer an injected frame offers. When the answer appears in a passage only inside text
   that reads like a prompt (a question/answer frame, a role marker, a control token, an
   instruction to ignore the rules or to answer with something), and nowhere else in the
   passages, the pipeline raises the ``injected_answer`` flag; the bundled policies defer on
   it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Prompt-frame and role markers, defused in every prompt: ``Question:``, ``Answer:``,
#: ``Q:``, ``A:``, ``Context:``, ``System:``, ``User:``, ``Assistant:``, ``Instruction(s):``...
FRAME_MARKER = re.compile(
    r"(?i)(?<![\w-])(question|answer|context|passages?|q|a|system|user|assistant|model|"
    r"instructions?|response|output)\s*:"
)
#: The markers that make text suspect: the words of this project's own few-shot frame and the
#: chat roles. ``Q:``/``A:`` (the usual FAQ layout) and the rest are defused but not suspect,
#: so an FAQ corpus does not raise the flag on every answer.
SUSPECT_MARKER = re.compile(
    r"(?i)(?<![\w-])(?:question|answer|context|system|user|assistant|instructions?)\s*:"
)
#: Chat-template control tokens of the common families (ChatML, Gemma, Llama, Mistral).
CONTROL_TOKEN = re.compile(
    r"(?i)<\|[a-z_]{1,30}\|>|</?(?:start_of_turn|end_of_turn|bos|eos|s|pad|unk)>|"
    r"\[/?INST\]|<<SYS>>|<</SYS>>"
)
#: Sentences that address the model instead of informing the reader.
INSTRUCTION = re.compile(
    r"(?i)\b(?:ignore|disregard|forget|override)\b[^.!?\n]{0,40}\b(?:instructions?|prompt|"
    r"rules|context|above|previous|prior|everything)\b"
    r"|\b(?:you must|you should|you will|always|only)\s+(?:answer|reply|respond|say|output)\b"
    r"|\b(?:answer|reply|respond|say|output)\s+(?:only\s+)?(?:with|by saying)\b"
    r"|\bnew instructions?\b|\bthe correct answer (?:is|must be)\b"
)

_WORD = re.compile(r"\w+", re.UNICODE)
_REACH = 240
"""How far (characters) past a marker its suspect text reaches: the frame's question and
answer, or the instruction's sentence and the next one."""


def neutralise(text: str) -> str:
    """``text`` with its prompt-frame markers and control tokens defused (it reads the same
    to a person: ``Answer: 42`` becomes ``Answer - 42``, ``<|im_start|>`` `` |im_start| ``,
    ``[INST]`` `` INST ``)."""
    text = CONTROL_TOKEN.sub(lambda m: " " + re.sub(r"[<>\[\]]", "", m.group(0)) + " ", text)
    return FRAME_MARKER.sub(lambda m: f"{m.group(1)} -", text)


@dataclass(frozen=True)
class Suspect:
    """Text in a passage that reads like a prompt rather than a document."""

    passage: int
    """The passage's index (0-based) in the list judged."""
    start: int
    end: int
    marker: str
    """What made it suspect: the matched marker, token or instruction, as written."""


def suspects(texts: Sequence[str]) -> list[Suspect]:
    """Every suspect span in ``texts``, merged where they overlap, in order."""
    found: list[Suspect] = []
    for index, text in enumerate(texts):
        spans: list[tuple[int, int, str]] = []
        for pattern in (SUSPECT_MARKER, CONTROL_TOKEN, INSTRUCTION):
            for match in pattern.finditer(text):
                spans.append((match.start(), min(len(text), match.end() + _REACH), match.group(0)))
        spans.sort()
        for start, end, marker in spans:
            if found and found[-1].passage == index and start <= found[-1].end:
                last = found[-1]
                found[-1] = Suspect(index, last.start, max(last.end, end), last.marker)
            else:
                found.append(Suspect(index, start, end, marker))
    return found


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def _holds(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def injected_answer(answer: str, texts: Sequence[str]) -> Suspect | None:
    """The suspect span an answer was taken from, when the answer's words appear (in order)
    inside suspect text and nowhere in the passages outside it; else None."""
    needle = _words(answer)
    if not needle:
        return None
    spans = suspects(texts)
    if not spans:
        return None
    source = next(
        (s for s in spans if _holds(_words(texts[s.passage][s.start : s.end]), needle)), None
    )
    if source is None:
        return None
    for index, text in enumerate(texts):
        # The passage with every suspect span cut out: a document that also states the
        # answer in its own words supports it.
        kept, at = [], 0
        for span in (s for s in spans if s.passage == index):
            kept.append(text[at : span.start])
            at = span.end
        kept.append(text[at:])
        if _holds(_words(" ".join(kept)), needle):
            return None
    return source


def injection_detail(span: Suspect, texts: Sequence[str]) -> str:
    """The flag's sentence: where the answer came from."""
    excerpt = " ".join(texts[span.passage][span.start : span.end].split())[:80]
    return (
        f"the answer appears only in passage {span.passage + 1}'s text that reads like a "
        f"prompt ({span.marker.strip()!r}: {excerpt!r}...), not as a statement of the documents"
    )
