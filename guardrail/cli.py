"""The ``guardrail`` command line: prepare, ingest, ask, demo, serve, eval, calibrate.

User errors print one line (``guardrail: error: ...``) and exit with status 2; no stack trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrail import policy_commands, verifier_cli
from guardrail.cli_settings import config_from, settings_from
from guardrail.errors import GuardrailError
from guardrail.evaluation import cli as evaluation_cli
from guardrail.models import MODELS, prepare_model
from guardrail.types import Response
from policies import PolicyError
from retrievers import (
    IndexNotFoundError,
    PassageIndex,
    RetrieverError,
    SentenceTransformerEmbedder,
    demo_corpus_path,
    load_documents,
)
from retrievers.types import Passage

USER_ERRORS = (GuardrailError, RetrieverError, PolicyError)


def cmd_prepare(args: argparse.Namespace) -> int:
    config = config_from(args)
    names = list(MODELS) if args.all else [config.generator]
    for name in names:
        folder = prepare_model(config.cache_dir, name)
        print(f"{name}: {folder}")
    return 0


def build_index(paths: Sequence[Path], index_dir: Path, *, max_words: int) -> PassageIndex:
    """Ingest documents, embed them and save the index (with progress bars)."""
    passages = load_documents(paths, max_words=max_words)
    print(f"Ingested {len(passages)} passages from {len(paths)} path(s).", file=sys.stderr)
    index = PassageIndex.build(passages, SentenceTransformerEmbedder(), progress=True)
    index.save(index_dir)
    return index


def cmd_ingest(args: argparse.Namespace) -> int:
    config = config_from(args)
    paths = [Path(p) for p in args.paths]
    if args.demo:
        paths.insert(0, demo_corpus_path())
    if not paths:
        raise GuardrailError("nothing to ingest: give one or more files or folders, or --demo")
    target = config.resolved_index_dir()
    index = build_index(paths, target, max_words=args.max_words)
    print(f"Index of {len(index)} passages saved to {target} (corpus {index.corpus_version}).")
    return 0


def format_response(response: Response, *, verbose: bool = True) -> str:
    """A readable rendering of a response for the terminal."""
    head = (
        f"{response.action.upper()}  confidence {response.confidence:.2f}  "
        f"rule {response.rule}  model {response.model}"
        + ("  (escalated)" if response.escalated else "")
    )
    if response.mode == "shadow":
        head += f"  [shadow mode: the policy would {response.policy_action}; not enforced]"
    lines = [head, "", response.text, ""]
    if response.shadow:
        lines.insert(
            1,
            f"Shadow policy {response.shadow['policy_name']} would "
            f"{response.shadow['action']} (rule {response.shadow['rule']})",
        )
    if verbose:
        lines.append("Why: " + "; ".join(response.reasons))
        for flag, detail in response.flag_details.items():
            lines.append(f"Flag {flag}: {detail}")
        shown = (
            "cg_mean",
            "parametric_agreement",
            "mean_logprob",
            "retrieval_top_score",
            "answer_in_passages",
        )
        values = [
            f"{name}={response.signals[name]:.2f}"
            for name in shown
            if response.signals.get(name) is not None
        ]
        lines.append("Signals: " + " ".join(values))
        lines.append(
            f"Policy: {response.policy_name} ({response.policy_hash}); "
            f"confidence: {response.confidence_method}"
        )
    return "\n".join(lines)


def cmd_ask(args: argparse.Namespace) -> int:
    from guardrail.pipeline import Guardrail, check_question

    config = config_from(args)
    # Cheap checks first: a bad question never waits for a model to load.
    question = check_question(args.question, config.max_question_chars)
    given = [
        Passage(id=f"given-{i}", text=t, source="command line")
        for i, t in enumerate(args.passage or [], start=1)
    ]
    guard = Guardrail.from_config(config, with_index=not given)
    response = guard.ask(question, passages=given or None, tenant=args.tenant)
    if args.json:
        print(json.dumps(response.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_response(response))
    return 0


DEMO_QUESTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("A question the documents answer", "When did the 1973 oil crisis begin?", ()),
    ("A question the documents do not answer", "Who won the 2022 FIFA World Cup?", ()),
    (
        "A document that contradicts a well-known fact",
        "What is the capital of France?",
        ("The capital of France is Lyon.",),
    ),
    (
        "A question the small model is unsure of (the policy escalates it)",
        "What must the adoption of laws which will have legal effect in the EU have?",
        (),
    ),
)


def cmd_demo(args: argparse.Namespace) -> int:
    from guardrail.pipeline import Guardrail

    config = config_from(args)
    target = config.resolved_index_dir()
    if not (target / "manifest.json").exists():
        print(f"Building the demo index at {target} (once)...", file=sys.stderr)
        build_index([demo_corpus_path()], target, max_words=180)
    guard = Guardrail.from_config(config)
    for title, question, passages in DEMO_QUESTIONS:
        given = [
            Passage(id=f"given-{i}", text=t, source="demo") for i, t in enumerate(passages, start=1)
        ] or None
        print(
            f"=== {title}\nQ: {question}"
            + (f"\n(documents: {' '.join(passages)})" if passages else "")
        )
        response = guard.ask(question, passages=given)
        print(format_response(response) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the service is the layer above guardrail (service -> guardrail).
    import uvicorn

    from guardrail.pipeline import load_policy_setting, local_backend
    from service import ServiceSettings, create_app

    settings = settings_from(ServiceSettings, args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    if settings.mode == "model":
        from service.model_server import create_model_app

        backend = local_backend(settings, settings.generator)
        app = create_model_app(backend, max_body_bytes=settings.max_body_bytes)
        uvicorn.run(app, host=settings.host, port=settings.port)
        return 0
    # Cheap checks first: a wrong policy or a missing index stops the command at once
    # instead of leaving a server that is never ready.
    load_policy_setting(settings.policy)
    index_dir = settings.resolved_index_dir()
    if not (index_dir / "manifest.json").is_file():
        raise IndexNotFoundError(index_dir)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``guardrail`` command.

    Each command module adds its commands with ``register(sub, common)``, ``common`` being
    the options every command that reads settings shares, and sets ``func(args) -> int``.
    """
    parser = argparse.ArgumentParser(
        prog="guardrail", description="Selective-answering RAG: answer, hedge, defer or escalate."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir", type=Path, help="models and default index (GUARDRAIL_CACHE_DIR)"
    )
    common.add_argument("--index", dest="index_dir", type=Path, help="index directory")
    sub = parser.add_subparsers(dest="command", required=True)
    for register_commands in (
        register,
        evaluation_cli.register,
        policy_commands.register,
        verifier_cli.register,
    ):
        register_commands(sub, common)
    return parser


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``prepare``, ``ingest``, ``ask``, ``demo`` and ``serve`` to the command line."""
    p = sub.add_parser("prepare", parents=[common], help="convert the local models once")
    p.add_argument("--all", action="store_true", help="also the escalation model")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("ingest", parents=[common], help="build an index from documents")
    p.add_argument("paths", nargs="*", help="JSONL, .txt or .md files, or folders")
    p.add_argument("--demo", action="store_true", help="include the bundled demo corpus")
    p.add_argument("--max-words", type=int, default=180, help="chunk size in words")
    p.set_defaults(func=cmd_ingest)

    for name, func, text in (
        ("ask", cmd_ask, "ask one question"),
        ("demo", cmd_demo, "a guided tour on the demo corpus"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        if name == "ask":
            p.add_argument("question")
            p.add_argument("--json", action="store_true", help="print the full record as JSON")
            p.add_argument(
                "--passage",
                action="append",
                help="use this text as a passage instead of retrieval (repeatable)",
            )
        p.add_argument("--policy", help="bundled policy name or policy YAML path")
        _policy_options(p)
        if name == "ask":
            p.add_argument("--tenant", help="use this tenant's policy from the policy file")
        p.add_argument("--top-k", type=int)
        p.add_argument("--no-escalation", action="store_true", help="configure no larger model")
        p.set_defaults(func=func)

    p = sub.add_parser("serve", parents=[common], help="serve the HTTP API (GET /readyz, ...)")
    p.add_argument("--host", help="interface to listen on (GUARDRAIL_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (GUARDRAIL_PORT, default 8000)")
    p.add_argument("--policy", help="bundled policy name or policy YAML path")
    p.add_argument(
        "--mode",
        choices=("embedded", "proxy", "model"),
        help="embedded (default): the local model answers; proxy: the OpenAI-compatible "
        "server at --upstream-url answers; model: serve the local model as an "
        "OpenAI-compatible model server (GUARDRAIL_MODE)",
    )
    p.add_argument("--upstream-url", help="proxy mode: the wrapped model server's /v1 URL")
    p.add_argument("--upstream-model", help="proxy mode: the model name to ask it for")
    p.add_argument(
        "--upstream-api",
        choices=("chat", "completions"),
        help="proxy mode: the upstream route that answers (default chat: /v1/chat/completions)",
    )
    p.add_argument(
        "--guard",
        help="proxy mode: the local model that reads the upstream's answers (default auto: "
        "the embedded model; none: no guard model)",
    )
    _policy_options(p)
    p.set_defaults(func=cmd_serve)


def _policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shadow-policy",
        help="a second policy decided and recorded on every answer, never enforced",
    )
    p.add_argument(
        "--decision-log", type=Path, help="append every decision record to this JSONL file"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardrail`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PolicyError as exc:
        # Each problem on its own line as FILE:LINE:COLUMN: message, the form editors jump
        # to; a problem in no file (an unknown bundled name) reads like any other error.
        for issue in exc.errors:
            text = issue.format(exc.source)
            if not (issue.source or exc.source):
                text = f"guardrail: error: {text}"
            print(text, file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        # Exactly one line, whatever the message holds.
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"guardrail: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("guardrail: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
