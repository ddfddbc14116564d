"""``guardrail verifier``: train, inspect and try the answerability verifier."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from guardrail.errors import GuardrailError

DEFAULT_DATA = Path("../shared/data/answerability")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``verifier train``, ``verifier score`` and ``verifier show``."""
    verifier = sub.add_parser("verifier", help="train, inspect or try the answerability verifier")
    actions = verifier.add_subparsers(dest="verifier_command", required=True)

    p = actions.add_parser(
        "train", help="fit the verifier on labelled (question, passage) pairs and write it"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder of <source>.jsonl training pairs (default {DEFAULT_DATA})",
    )
    p.add_argument(
        "--sources",
        default="squad,nq,musique",
        help="comma-separated sources to train on (default squad,nq,musique)",
    )
    p.add_argument("--splits", default="train", help="splits to train on (default train)")
    p.add_argument(
        "--validate",
        default="val",
        help="split to report AUROC on per source, or 'none' (default val; never the "
        "training split)",
    )
    p.add_argument("--limit", type=int, help="at most this many pairs per source (balanced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the heads")
    p.add_argument("--out", type=Path, required=True, help="the artifact to write (JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = actions.add_parser("score", help="score a question against passages (and an answer)")
    p.add_argument("question")
    p.add_argument("--passage", action="append", required=True, help="a passage (repeatable)")
    p.add_argument("--answer", help="an answer to check against the passages")
    p.add_argument("--artifact", type=Path, help="verifier artifact (default: the shipped one)")
    p.set_defaults(func=cmd_score)

    p = actions.add_parser("show", help="what an artifact was trained on, and how it validated")
    p.add_argument("--artifact", type=Path, help="verifier artifact (default: the shipped one)")
    p.set_defaults(func=cmd_show)


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def cmd_train(args: argparse.Namespace) -> int:
    from guardrail.verifier import TokenEncoder
    from guardrail.verifier_training import evaluate, load_pairs, train

    sources, splits = _list(args.sources), _list(args.splits)
    if not sources or not splits:
        raise GuardrailError("--sources and --splits each need at least one name")
    if args.limit is not None and args.limit < 2:
        raise GuardrailError(f"--limit must be at least 2 (one pair per label), got {args.limit}")
    if args.validate != "none" and args.validate in splits:
        raise GuardrailError(
            f"--validate {args.validate} is also a training split; validate on another split"
        )
    pairs = load_pairs(args.data, sources, splits, args.limit)
    encoder = TokenEncoder()
    start = time.perf_counter()
    meta = {"data": str(args.data), "command": "guardrail verifier train"}
    model = train(pairs, encoder, seed=args.seed, C=args.C, progress=not args.quiet, meta=meta)
    seconds = time.perf_counter() - start
    validation = {}
    if args.validate != "none":
        groups = {}
        for source in sources:
            try:
                groups[f"{source}/{args.validate}"] = load_pairs(
                    args.data, [source], [args.validate]
                )
            except GuardrailError:
                continue  # a source without that split is simply not reported
        validation = evaluate(model, encoder, groups, progress=not args.quiet)
    model = dataclasses.replace(model, validation=validation)
    path = model.save(args.out)
    print(f"trained on {len(pairs)} pairs in {seconds:.0f} s; wrote {path}")
    for name, result in validation.items():
        print(f"  {name}: answerability AUROC {result['auroc']} (n={result['n']})")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from guardrail.verifier import Verifier

    score = Verifier.load(args.artifact).score(args.question, args.passage, args.answer)
    print(json.dumps(dataclasses.asdict(score), indent=2))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from guardrail.verifier import VerifierModel

    model = VerifierModel.load(args.artifact)
    print(json.dumps({"training": model.training, "validation": model.validation}, indent=2))
    return 0
