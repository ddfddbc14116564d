"""The answerability verifier: its artifact, its features, its training command and its
signals. The encoder is the real bundled all-MiniLM-L6-v2; the training fixture is a tiny
set of made-up pairs in the repository (tests/fixtures/answerability/tiny.jsonl)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from guardrail.cli import main
from guardrail.config import GuardrailConfig
from guardrail.pipeline import Guardrail, load_policy_setting
from guardrail.signals import REGISTRY, Group, Needs, SignalInputs, compute_text_signals
from guardrail.types import TokenStats
from guardrail.verifier import (
    ARTIFACT_FORMAT,
    FEATURES,
    HEADS,
    Rarity,
    TokenEncoder,
    Verifier,
    VerifierError,
    VerifierModel,
    VerifierScore,
    answer_context,
    default_artifact,
    verifier_from_setting,
    windows,
)
from guardrail.verifier_training import (
    TrainingDataError,
    balanced_draw,
    fingerprint,
    load_pairs,
    support_examples,
)
from policies import Action, Assessment, decide
from retrievers import Passage
from retrievers.embedding import SentenceTransformerEmbedder

FIXTURES = Path(__file__).parent / "fixtures" / "answerability"

TOWER = (
    "Halvorsen's clock tower stands in the market square of Eldvik. Its bell, cast in Bergen, "
    "weighs two tonnes and rings every hour from seven to ten."
)
OIL = (
    "The 1973 oil crisis began in October 1973 when the members of the Organization of Arab "
    "Petroleum Exporting Countries proclaimed an oil embargo."
)


@pytest.fixture(scope="module")
def encoder() -> TokenEncoder:
    return TokenEncoder()


@pytest.fixture(scope="module")
def shipped(encoder: TokenEncoder) -> Verifier:
    return Verifier(VerifierModel.load(), encoder)


# -- the artifact ---------------------------------------------------------------------------


def test_shipped_artifact_is_json_with_its_provenance() -> None:
    path = default_artifact()
    data = json.loads(path.read_text())
    assert data["format"] == ARTIFACT_FORMAT
    assert data["features"] == list(FEATURES)
    assert set(data["heads"]) == set(HEADS)
    training = data["training"]
    assert len(training["fingerprint"]) == 64
    assert "squad" in training["sources"] and training["splits"] == ["train"]
    assert path.stat().st_size < 10_000_000


def test_shipped_verifier_gives_its_documented_outputs(shipped: Verifier) -> None:
    answered = shipped.score("When did the 1973 oil crisis begin?", [OIL], "October 1973")
    unrelated = shipped.score("Who won the 2022 FIFA World Cup?", [OIL])
    near_miss = shipped.score("When did the 1979 oil crisis end?", [OIL], "October 1973")
    assert answered.answerable is not None and answered.answerable > 0.6
    assert unrelated.answerable is not None and unrelated.answerable < 0.2
    assert near_miss.answerable is not None
    assert answered.answerable > near_miss.answerable > unrelated.answerable
    assert answered.support is not None and near_miss.support is not None
    assert answered.support > near_miss.support
    assert unrelated.support is None  # no answer given


def test_best_passage_and_missing_inputs(shipped: Verifier) -> None:
    score = shipped.score("When was the Brindle Bridge opened?", [OIL, TOWER + " " + BRIDGE])
    assert score.passage == 1
    assert shipped.score("When?", []) == VerifierScore(None, None, None)
    assert shipped.score("   ", [OIL]) == VerifierScore(None, None, None)
    # An answer that no passage holds has no support score.
    assert shipped.score("When did the oil crisis begin?", [OIL], "1850").support is None


BRIDGE = "The Brindle Bridge over the river Ouse was opened in 1887."


def test_features_have_one_column_each(shipped: Verifier) -> None:
    x = shipped.features([("Where was the bell cast?", TOWER), ("Who is the mayor?", TOWER)])
    assert x.shape == (2, len(FEATURES))
    assert np.isfinite(x).all()
    missing = FEATURES.index("missing_share")
    assert x[0, missing] == 0.0  # bell, cast: both in the passage
    assert x[1, missing] == 1.0  # mayor: not in it


def test_bad_artifacts_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(VerifierError, match="no verifier artifact"):
        VerifierModel.load(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(VerifierError, match="not JSON"):
        VerifierModel.load(tmp_path / "text.json")
    data = json.loads(default_artifact().read_text())
    (tmp_path / "other.json").write_text(json.dumps({**data, "format": "something/9"}))
    with pytest.raises(VerifierError, match="not a verifier artifact"):
        VerifierModel.load(tmp_path / "other.json")
    (tmp_path / "features.json").write_text(json.dumps({**data, "features": ["cosine_max"]}))
    with pytest.raises(VerifierError, match="retrain"):
        VerifierModel.load(tmp_path / "features.json")
    broken = {**data, "heads": {"answerable": data["heads"]["answerable"]}}
    (tmp_path / "heads.json").write_text(json.dumps(broken))
    with pytest.raises(VerifierError, match="malformed"):
        VerifierModel.load(tmp_path / "heads.json")


def test_setting_names_the_artifact(tmp_path: Path) -> None:
    assert verifier_from_setting("none") is None
    default = verifier_from_setting("default")
    assert default is not None
    assert default.model.fingerprint == VerifierModel.load().fingerprint
    with pytest.raises(VerifierError, match="no verifier artifact"):
        verifier_from_setting(str(tmp_path / "nope.json"))


# -- pieces ---------------------------------------------------------------------------------


def test_windows_cover_a_long_text_and_stop_at_the_cap() -> None:
    text = " ".join(f"w{i}" for i in range(200))
    parts = windows(text)
    assert parts[0].split()[0] == "w0" and parts[-1].split()[-1] == "w199"
    assert all(len(p.split()) <= 80 for p in parts)
    assert windows("short text") == ["short text"]
    assert len(windows(" ".join(["x"] * 5000))) == 24


def test_answer_context_is_the_answers_sentence_with_neighbours() -> None:
    text = "One. The bell weighs two tonnes. Three. Four."
    assert answer_context([text], "two tonnes") == "One. The bell weighs two tonnes. Three."
    assert answer_context([text], "five tonnes") is None
    assert answer_context([text], "") is None


def test_rarity_ranks_rare_words_higher() -> None:
    rarity = Rarity.fit(["the bell rang", "the bell", "the tower", "the clock"])
    assert rarity("bell") > rarity("the")
    assert rarity("unseen") >= rarity("bell")  # seen once or never: the rarest


# -- training -------------------------------------------------------------------------------


def test_training_pairs_load_with_clear_errors(tmp_path: Path) -> None:
    pairs = load_pairs(FIXTURES, ["tiny"], ["train"])
    assert len(pairs) == 12 and {p.split for p in pairs} == {"train"}
    assert len(balanced_draw(pairs, 4)) == 4
    assert sum(p.answerable for p in balanced_draw(pairs, 4)) == 2
    assert fingerprint(pairs) == fingerprint(list(reversed(pairs)))
    with pytest.raises(TrainingDataError, match=r"no training file .*sources found in .*tiny"):
        load_pairs(FIXTURES, ["squad"], ["train"])
    with pytest.raises(TrainingDataError, match="no pairs in split"):
        load_pairs(FIXTURES, ["tiny"], ["val2"])
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(TrainingDataError, match=r"bad\.jsonl:1: not a training pair"):
        load_pairs(tmp_path, ["bad"], ["train"])


def test_support_examples_label_the_answers_sentence() -> None:
    pairs = load_pairs(FIXTURES, ["tiny"], ["train"])
    examples = support_examples(pairs)
    supported = [(q, t) for q, t, ok in examples if ok]
    assert ("When was the Brindle Bridge opened?", pairs[0].passage) in supported
    assert any(not ok for _, _, ok in examples)


def test_train_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "verifier.json"
    argv = ["verifier", "train", "--data", str(FIXTURES), "--sources", "tiny", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained on 12 pairs" in printed and "tiny/val: answerability AUROC" in printed
    model = VerifierModel.load(out)
    assert model.training["fingerprint"] == fingerprint(load_pairs(FIXTURES, ["tiny"], ["train"]))
    assert model.validation["tiny/val"]["n"] == 4
    # Seeded: a second run writes the same artifact.
    again = tmp_path / "again.json"
    assert main([*argv, "--out", str(again)]) == 0
    assert json.loads(again.read_text()) == json.loads(out.read_text())
    capsys.readouterr()
    # The trained artifact is usable through the setting and the score command.
    assert (
        main(
            [
                "verifier",
                "score",
                "Who designed the Brindle Bridge?",
                "--passage",
                BRIDGE,
                "--artifact",
                str(out),
            ]
        )
        == 0
    )
    scored = json.loads(capsys.readouterr().out)
    assert 0.0 <= scored["answerable"] <= 1.0 and scored["passage"] == 0


def test_train_command_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["verifier", "train", "--data", str(FIXTURES), "--out", str(tmp_path / "v.json")]
    assert main([*base, "--sources", "tiny", "--validate", "train"]) == 2
    assert "also a training split" in capsys.readouterr().err
    assert main([*base, "--sources", "nothing"]) == 2
    assert "no training file" in capsys.readouterr().err
    assert main([*base, "--sources", "tiny", "--limit", "1"]) == 2
    assert "--limit must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()


def test_show_prints_provenance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verifier", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["training"]["fingerprint"] == VerifierModel.load().training["fingerprint"]


# -- signals --------------------------------------------------------------------------------


def test_verifier_signals_are_registered_in_their_own_group() -> None:
    verifier = [s for s in REGISTRY if s.group is Group.VERIFIER]
    assert [s.name for s in verifier] == ["verifier_answerable", "verifier_support"]
    assert all(s.needs is Needs.VERIFIER and s.direction == +1 for s in verifier)
    assert REGISTRY[-2:] == tuple(verifier)


def test_signals_read_the_verifier_once_and_are_null_without_it() -> None:
    calls = []

    def verify(question: str, passages: list[str], answer: str) -> VerifierScore:
        calls.append((question, tuple(passages), answer))
        return VerifierScore(0.8, 0.3, 0)

    passage = Passage(id="p", text=TOWER, source="t")
    signals = compute_text_signals("Where was the bell cast?", "Bergen", [passage], None, verify)
    assert signals["verifier_answerable"] == 0.8 and signals["verifier_support"] == 0.3
    assert calls == [("Where was the bell cast?", (TOWER,), "Bergen")]
    bare = compute_text_signals("Where was the bell cast?", "Bergen", [passage])
    assert bare["verifier_answerable"] is None and bare["verifier_support"] is None
    inputs = SignalInputs("Bergen", TokenStats.empty(), None, [], verify=verify)
    assert inputs.verification is None  # no passages: nothing to verify


# -- the default policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "answerable", "action", "rule"),
    [
        (0.45, 0.2, Action.DEFER, "passages-lack-answer"),  # would have hedged
        (0.10, 0.2, Action.DEFER, "passages-lack-answer"),  # would have escalated
        (0.45, 0.6, Action.HEDGE, "threshold:hedge"),
        (0.10, 0.6, Action.ESCALATE, "threshold:otherwise"),
        (0.70, 0.2, Action.ANSWER, "threshold:answer"),  # a confident model is not overruled
        (0.45, None, Action.HEDGE, "threshold:hedge"),  # no verifier: the rule cannot match
    ],
)
def test_balanced_defers_what_the_passages_do_not_answer(
    confidence: float, answerable: float | None, action: Action, rule: str
) -> None:
    policy = load_policy_setting("balanced")
    signals = {"verifier_answerable": answerable, "retrieval_top_score": 0.6}
    decision = decide(Assessment(confidence, signals, frozenset()), policy)
    assert (decision.action, decision.rule) == (action, rule)


class CountingEncoder(TokenEncoder):
    """The real encoder, counting the texts it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[str] = []

    def encode(self, texts, progress=None):  # type: ignore[no-untyped-def]
        self.encoded.extend(texts)
        return super().encode(texts, progress)


def test_an_escalated_answer_reuses_the_encoded_question_and_passages() -> None:
    encoder = CountingEncoder()
    verifier = Verifier(VerifierModel.load(), encoder)
    first = verifier.score("Where was the bell cast?", [TOWER], "Bergen")
    count = len(encoder.encoded)
    second = verifier.score("Where was the bell cast?", [TOWER], "in Bergen")
    assert second.answerable == first.answerable
    assert len(encoder.encoded) == count  # the same sentence holds both answers: all cached
    uncached = Verifier(VerifierModel.load(), encoder, cache=0)
    uncached.score("Where was the bell cast?", [TOWER], "Bergen")
    assert len(encoder.encoded) == 2 * count


def test_the_verifier_shares_the_retrievers_copy_of_the_encoder(shipped: Verifier) -> None:
    """Built from settings, the verifier reads the embedder's weights (one copy in memory)
    and scores exactly as with a copy of its own."""
    embedder = SentenceTransformerEmbedder()
    verifier = verifier_from_setting("default", shared=embedder.token_model)
    assert verifier is not None
    question, answer = "When did the 1973 oil crisis begin?", "October 1973"
    assert verifier.score(question, [OIL], answer) == shipped.score(question, [OIL], answer)
    _, transformer, lock = verifier.encoder._load()
    assert transformer is embedder._load()[0].auto_model
    assert lock is embedder.token_model()[2]
    built = Guardrail.from_config(GuardrailConfig(), with_index=False)
    assert built.embedder is not None and built.verify is not None
    encoder = built.verify.func.__self__.encoder  # type: ignore[attr-defined]
    assert encoder.shared is not None and encoder.shared.__self__ is built.embedder


def test_the_shared_encoder_serves_both_readers_from_many_threads() -> None:
    """The embedder and the verifier read one model and one tokenizer (every use under the
    embedder's lock): from many threads at once, each gets what it gets alone. The passage is
    longer than either reader's truncation (the verifier's 160 tokens, the embedder's 256):
    a fast tokenizer keeps its truncation setting between calls, so a reader tokenising
    outside the lock can cut the other's text at its own length (seen: 1 call in 60)."""
    embedder = SentenceTransformerEmbedder()
    verifier = verifier_from_setting("default", shared=embedder.token_model)
    assert verifier is not None
    verifier = Verifier(verifier.model, verifier.encoder, cache=0)  # every call encodes
    long_passage = " ".join([TOWER] * 12)
    expected = verifier.score("Where was the bell cast?", [long_passage], "Bergen")
    expected_vectors = embedder.embed([long_passage, BRIDGE])

    def work(i: int) -> bool:
        if i % 2:
            return verifier.score("Where was the bell cast?", [long_passage], "Bergen") == expected
        vectors = embedder.embed([long_passage, BRIDGE])
        return bool(np.allclose(vectors, expected_vectors, atol=1e-6))

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert all(pool.map(work, range(60)))
