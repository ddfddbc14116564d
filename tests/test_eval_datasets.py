"""Evaluation loaders (on tiny hand-written files with the shared sets' schemas), the user's
JSONL format with its errors, and seeded disjoint splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrail.evaluation.datasets import (
    DATASETS,
    DatasetError,
    EvalItem,
    load_items,
    load_user_jsonl,
    polar_answers,
    split_items,
)

DATA = Path(__file__).parent / "fixtures" / "eval_data"
SMALL = Path(__file__).parent / "fixtures" / "eval_small.jsonl"


def test_squad2_gold_and_open() -> None:
    gold, setting = load_items("squad2", None, DATA)
    assert setting == "gold" and len(gold) == 16
    first = gold[0]
    assert first.passages is not None and "river number 0" in first.passages[0].text
    assert first.answers == ("10 kilometres",) and not first.unanswerable
    assert sum(item.unanswerable for item in gold) == 8
    opened, _ = load_items("squad2", "open", DATA)
    assert all(item.open_retrieval for item in opened)
    assert opened[0].meta["gold_passage"] == "Topic_0#0"


@pytest.mark.parametrize(
    ("name", "setting", "check"),
    [
        ("selfaware", "open", lambda items: [i.unanswerable for i in items] == [False, True]),
        ("selfaware", "closed", lambda items: items[0].passages == ()),
        (
            "nq_open",
            "open",
            lambda items: items[0].answers == ("William Shakespeare", "Shakespeare"),
        ),
        # Neither statement is negated: the statement alone is the gold answer.
        ("conflictqa", "parametric", lambda items: items[0].answers == ("The sky is blue.",)),
        ("conflictqa", "counter", lambda items: "green" in items[0].passages[0].text),
        # One statement negated, the question not: "no" and "yes" are gold answers too.
        (
            "conflictqa",
            "parametric",
            lambda items: items[1].answers == ("The moon is not made of cheese.", "no"),
        ),
        (
            "conflictqa",
            "counter",
            lambda items: items[1].answers == ("The moon is made of cheese.", "yes"),
        ),
        ("ramdocs", "given", lambda items: len(items[0].passages) == 3),
        (
            "hotpotqa",
            "gold",
            # Two gold paragraphs and the first distractor, whose record in the released file
            # also carries a retrieval score.
            lambda items: (
                len(items[0].passages) == 3
                and not items[0].unanswerable
                and items[0].passages[2].title == "C"
                and items[0].passages[2].text == "River C is 5 km long."
            ),
        ),
        (
            "hotpotqa",
            "no-gold",
            lambda items: items[0].unanswerable and "River A" not in str(items[0].passages),
        ),
    ],
)
def test_every_shared_set_loads(name: str, setting: str, check: object) -> None:
    items, used = load_items(name, setting, DATA)
    assert used == setting and items
    assert check(items)  # type: ignore[operator]


def test_every_registered_dataset_has_a_fixture() -> None:
    for name, spec in DATASETS.items():
        for setting in spec.settings:
            assert load_items(name, setting, DATA)[0], (name, setting)


def test_unknown_names_say_what_is_valid(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'squad3'.*squad2"):
        load_items("squad3", None, DATA)
    with pytest.raises(DatasetError, match="no setting 'closed'; valid: gold, open"):
        load_items("squad2", "closed", DATA)
    with pytest.raises(DatasetError, match="does not exist; set --data-dir"):
        load_items("squad2", None, tmp_path)


def test_user_jsonl() -> None:
    items = load_user_jsonl(SMALL)
    assert len(items) == 8
    assert items[0] == EvalItem(
        id="q1",
        question="When was the Eiffel Tower completed?",
        answers=("1889",),
        unanswerable=False,
        passages=items[0].passages,
        group="q1",
    )
    assert items[2].unanswerable and items[2].answers == ()
    assert items[0].passages is not None and items[0].passages[0].text.startswith("The Eiffel")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: not valid JSON"),
        ('{"answers": ["x"]}', ":2: 'question' must be a non-empty string"),
        ('{"question": "Q?"}', ":2: give 'answers' .* or \"unanswerable\": true"),
        ('{"question": "Q?", "answers": "x"}', ":2: 'answers' must be a list of strings"),
        ('{"question": "Q?", "unanswerable": "yes"}', ":2: 'unanswerable' must be true or false"),
        ('{"question": "Q?", "answers": ["x"], "passages": "p"}', ":2: 'passages' must be a list"),
    ],
)
def test_user_jsonl_errors_name_file_and_line(line: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question": "Fine?", "answers": ["yes"]}\n' + line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_user_jsonl(path)


def test_splits_are_seeded_balanced_and_disjoint_by_group() -> None:
    items, _ = load_items("squad2", "gold", DATA)
    calibrate = split_items(items, "calibrate", 4, seed=3)
    test = split_items(items, "test", 4, seed=3)
    assert {i.group for i in calibrate}.isdisjoint({i.group for i in test})
    assert sum(i.unanswerable for i in calibrate) == 2
    assert [i.id for i in calibrate] == [i.id for i in split_items(items, "calibrate", 4, seed=3)]
    assert [i.id for i in split_items(items, "calibrate", 4, seed=4)] != [i.id for i in calibrate]


def test_split_errors() -> None:
    items, _ = load_items("squad2", "gold", DATA)
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        split_items(items, "dev", 2, 0)
    with pytest.raises(DatasetError, match="cannot draw 100 balanced"):
        split_items(items, "test", 100, 0)


@pytest.mark.parametrize(
    ("question", "memory", "counter", "expected"),
    [
        ("Is the moon made of cheese?", "It is not.", "It is.", ("no", "yes")),
        (
            "Do guitarists feel pain?",
            "Guitarists feel pain.",
            "Guitarists don't feel pain.",
            ("yes", "no"),
        ),
        # A negated question, or two statements alike in negation, do not settle it.
        ("Isn't the moon made of cheese?", "It is not.", "It is.", (None, None)),
        ("Is the sky green?", "The sky is blue.", "The sky is green.", (None, None)),
        (
            "Was it made with bitcoin?",
            "It cannot be said; it was not.",
            "It was not.",
            (None, None),
        ),
    ],
)
def test_polar_answers_of_yes_no_statements(
    question: str, memory: str, counter: str, expected: tuple[str | None, str | None]
) -> None:
    assert polar_answers(question, memory, counter) == expected
