"""Tests of the policies package: decision tables, loader errors, bundled policies, hashing."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml

from policies import (
    Action,
    Assessment,
    Decision,
    Policy,
    PolicyError,
    PolicyIssue,
    PolicyLoadError,
    PolicyNotCertifiedError,
    PolicyNotFoundError,
    PolicyValidationError,
    bundled_policy_path,
    decide,
    load_policy,
    parse_policy,
)

SIGNALS = frozenset(
    {
        "retrieval_top_score",
        "retrieval_margin",
        "answer_in_passages",
        "cg_mean",
        "cg_min",
        "cg_first",
        "parametric_agreement",
        "mean_logprob",
        "mean_entropy",
        "min_token_prob",
        "verifier_answerable",
    }
)
FLAGS = frozenset({"model_abstained", "knowledge_conflict", "no_passages", "injected_answer"})


def parse(text: str) -> Policy:
    """Parse dedented YAML with the test signal and flag names."""
    return parse_policy(
        textwrap.dedent(text), source="policy.yaml", signal_names=SIGNALS, flag_names=FLAGS
    )


def assess(
    confidence: float, flags: frozenset[str] = frozenset(), **signals: float | None
) -> Assessment:
    return Assessment(confidence=confidence, signals=signals, flags=flags)


# --------------------------------------------------------------------------- decide: thresholds

THRESHOLDS_ONLY = """
    version: 1
    name: thresholds-only
    thresholds: {answer: 0.55, hedge: 0.30, otherwise: escalate}
"""


@pytest.mark.parametrize(
    ("confidence", "action", "rule"),
    [
        (1.0, Action.ANSWER, "threshold:answer"),
        (0.55, Action.ANSWER, "threshold:answer"),  # equal to the answer threshold answers
        (0.5499, Action.HEDGE, "threshold:hedge"),
        (0.30, Action.HEDGE, "threshold:hedge"),  # equal to the hedge threshold hedges
        (0.2999, Action.ESCALATE, "threshold:otherwise"),
        (0.0, Action.ESCALATE, "threshold:otherwise"),
    ],
)
def test_thresholds_decide_when_there_are_no_rules(
    confidence: float, action: Action, rule: str
) -> None:
    decision = decide(assess(confidence), parse(THRESHOLDS_ONLY))
    assert (decision.action, decision.rule) == (action, rule)


@pytest.mark.parametrize(
    ("thresholds", "confidence", "action"),
    [
        ("{answer: 0.5, hedge: 0.2, otherwise: defer}", 0.1, Action.DEFER),
        ("{answer: 0.5, hedge: 0.5, otherwise: defer}", 0.49, Action.DEFER),  # no hedge band
        ("{answer: 0.5, hedge: 0.5, otherwise: defer}", 0.5, Action.ANSWER),
        ("{answer: 0.0, hedge: 0.0, otherwise: defer}", 0.0, Action.ANSWER),
        ("{answer: 1.0, hedge: 0.0, otherwise: defer}", 0.999, Action.HEDGE),
        ("{answer: 1, hedge: 1, otherwise: escalate}", 1.0, Action.ANSWER),
    ],
)
def test_threshold_settings(thresholds: str, confidence: float, action: Action) -> None:
    policy = parse(f"version: 1\nname: t\nthresholds: {thresholds}\n")
    assert decide(assess(confidence), policy).action is action


def test_threshold_reasons_state_the_numbers() -> None:
    policy = parse(THRESHOLDS_ONLY)
    assert decide(assess(0.42), policy).reasons == (
        "confidence 0.42 is below the answer threshold 0.55 "
        "and at or above the hedge threshold 0.3",
    )
    assert decide(assess(0.7), policy).reasons == (
        "confidence 0.7 is at or above the answer threshold 0.55",
    )
    assert decide(assess(0.1), policy).reasons == (
        "confidence 0.1 is below the hedge threshold 0.3",
    )
    # A value that rounds to the threshold is shown with enough digits not to look equal.
    assert "0.54999" in decide(assess(0.54999), policy).reasons[0]


# --------------------------------------------------------------------------- decide: rules

RULES = """
    version: 1
    name: rules
    thresholds: {answer: 0.55, hedge: 0.30, otherwise: escalate}
    rules:
      - name: model-abstained
        when: {flag: model_abstained}
        action: defer
        reason: the model itself found no answer in the passages
      - name: weak-retrieval
        when:
          all:
            - {signal: retrieval_top_score, lt: 0.25}
            - {signal: answer_in_passages, lt: 0.5}
        action: defer
      - name: knowledge-conflict
        when:
          any:
            - {flag: knowledge_conflict}
            - all:
                - {signal: cg_min, lt: 0}
                - {signal: parametric_agreement, lt: 0.5}
        action: hedge
      - name: nearly-certain
        when: {signal: confidence, ge: 0.95}
        action: answer
      - name: tokens-unsure
        when: {all: [{signal: min_token_prob, lt: 0.01}, {not: {flag: no_passages}}]}
        action: escalate
"""
ABSTAINED = frozenset({"model_abstained"})
CONFLICT = frozenset({"knowledge_conflict"})


@pytest.mark.parametrize(
    ("assessment", "action", "rule"),
    [
        (assess(0.9, ABSTAINED), Action.DEFER, "model-abstained"),
        # first match wins: the abstention rule comes before the conflict rule
        (assess(0.9, ABSTAINED | CONFLICT), Action.DEFER, "model-abstained"),
        # rules come before the thresholds, however confident
        (assess(0.99, CONFLICT), Action.HEDGE, "knowledge-conflict"),
        (
            assess(0.9, retrieval_top_score=0.18, answer_in_passages=0.0),
            Action.DEFER,
            "weak-retrieval",
        ),
        # all: one false leaf and the rule does not match
        (
            assess(0.9, retrieval_top_score=0.18, answer_in_passages=1.0),
            Action.ANSWER,
            "threshold:answer",
        ),
        (
            assess(0.9, retrieval_top_score=0.25, answer_in_passages=0.0),
            Action.ANSWER,
            "threshold:answer",
        ),
        # any: the nested all matches without the flag
        (assess(0.9, cg_min=-0.2, parametric_agreement=0.3), Action.HEDGE, "knowledge-conflict"),
        (assess(0.9, cg_min=0.2, parametric_agreement=0.3), Action.ANSWER, "threshold:answer"),
        # the built-in confidence signal
        (assess(0.95, CONFLICT), Action.HEDGE, "knowledge-conflict"),
        (assess(0.95), Action.ANSWER, "nearly-certain"),
        (assess(0.9499), Action.ANSWER, "threshold:answer"),
        # not
        (assess(0.6, min_token_prob=0.001), Action.ESCALATE, "tokens-unsure"),
        (
            assess(0.6, frozenset({"no_passages"}), min_token_prob=0.001),
            Action.ANSWER,
            "threshold:answer",
        ),
        # missing values make leaves false, so the rules fall through to the thresholds
        (
            assess(0.4, retrieval_top_score=None, answer_in_passages=0.0),
            Action.HEDGE,
            "threshold:hedge",
        ),
        (assess(0.4, answer_in_passages=0.0), Action.HEDGE, "threshold:hedge"),
        (
            assess(0.4, retrieval_top_score=math.nan, answer_in_passages=0.0),
            Action.HEDGE,
            "threshold:hedge",
        ),
        (assess(0.6, min_token_prob=None), Action.ANSWER, "threshold:answer"),
        (
            assess(0.1, cg_min=None, parametric_agreement=0.1),
            Action.ESCALATE,
            "threshold:otherwise",
        ),
    ],
)
def test_rules_table(assessment: Assessment, action: Action, rule: str) -> None:
    decision = decide(assessment, parse(RULES))
    assert (decision.action, decision.rule) == (action, rule)


def one_rule(condition: str) -> Policy:
    """A policy whose only rule defers when ``condition`` (YAML flow text) holds."""
    return parse(
        f"""
        version: 1
        name: one-rule
        thresholds: {{answer: 0.5, hedge: 0.5, otherwise: escalate}}
        rules:
          - {{name: r, when: {condition}, action: defer}}
        """
    )


@pytest.mark.parametrize(
    ("condition", "signals", "flags", "holds"),
    [
        ("{signal: cg_mean, lt: 0}", {"cg_mean": -0.1}, (), True),
        ("{signal: cg_mean, lt: 0}", {"cg_mean": 0.0}, (), False),
        ("{signal: cg_mean, le: 0}", {"cg_mean": 0.0}, (), True),
        ("{signal: cg_mean, gt: 0}", {"cg_mean": 0.0}, (), False),
        ("{signal: cg_mean, ge: 0}", {"cg_mean": 0.0}, (), True),
        ("{signal: cg_mean, eq: 1}", {"cg_mean": 1.0}, (), True),
        ("{signal: cg_mean, ne: 1}", {"cg_mean": 1.0}, (), False),
        ("{signal: mean_logprob, gt: -2.5}", {"mean_logprob": -1.0}, (), True),
        ("{signal: cg_mean, ne: 1}", {"cg_mean": None}, (), False),  # missing: even ne is false
        ("{not: {signal: cg_mean, ge: 0}}", {"cg_mean": None}, (), True),  # not of a false leaf
        ("{not: {not: {flag: no_passages}}}", {}, ("no_passages",), True),
        ("{not: {flag: no_passages}}", {}, ("no_passages",), False),
        (
            "{any: [{signal: cg_mean, lt: 0}, {flag: no_passages}]}",
            {"cg_mean": None},
            ("no_passages",),
            True,
        ),
        ("{any: [{signal: cg_mean, lt: 0}, {flag: no_passages}]}", {"cg_mean": None}, (), False),
        (
            "{all: [{signal: cg_mean, lt: 0}, {flag: no_passages}]}",
            {"cg_mean": -1.0},
            ("no_passages",),
            True,
        ),
        (
            "{all: [{any: [{flag: no_passages}, {not: {signal: cg_min, gt: 0}}]},"
            " {signal: confidence, ge: 0.5}]}",
            {"cg_min": -1.0},
            (),
            True,
        ),
        (
            "{all: [{any: [{flag: no_passages}, {not: {signal: cg_min, gt: 0}}]},"
            " {signal: confidence, ge: 0.95}]}",
            {"cg_min": -1.0},
            (),
            False,
        ),
    ],
)
def test_condition_semantics(
    condition: str, signals: dict[str, float | None], flags: tuple[str, ...], holds: bool
) -> None:
    decision = decide(Assessment(0.9, signals, frozenset(flags)), one_rule(condition))
    assert decision.rule == ("r" if holds else "threshold:answer")


def test_reasons_explain_the_leaves_that_decided() -> None:
    policy = parse(RULES)
    weak = decide(assess(0.9, retrieval_top_score=0.18, answer_in_passages=0.0), policy)
    assert weak.reasons == ("retrieval_top_score 0.18 < 0.25", "answer_in_passages 0 < 0.5")

    abstained = decide(assess(0.9, ABSTAINED), policy)
    assert abstained.reasons == (
        "the model itself found no answer in the passages",
        "flag model_abstained is set",
    )

    # Retrieval signals given, so that no rule is left unchecked for lack of a value.
    retrieval: dict[str, float | None] = {"retrieval_top_score": 0.8, "answer_in_passages": 1.0}
    signals = {"cg_min": 0.3, "parametric_agreement": 0.9, **retrieval}
    conflict = decide(Assessment(0.9, signals, CONFLICT), policy)
    assert conflict.reasons == ("flag knowledge_conflict is set",)

    unsure = decide(Assessment(0.6, {**signals, "min_token_prob": 0.001}), policy)
    assert unsure.reasons == ("min_token_prob 0.001 < 0.01", "flag no_passages is not set")


def test_missing_signals_are_recorded_in_the_reasons() -> None:
    decision = decide(assess(0.4, answer_in_passages=0.0), parse(RULES))
    assert decision.reasons[0].startswith("confidence 0.4 is below the answer threshold")
    assert (
        "rule 'weak-retrieval' did not match; it had no value for retrieval_top_score"
        in decision.reasons
    )
    assert any("cg_min, parametric_agreement" in reason for reason in decision.reasons)

    not_missing = decide(Assessment(0.9, {}), one_rule("{not: {signal: cg_mean, ge: 0}}"))
    assert not_missing.reasons == ("cg_mean has no value, so 'cg_mean >= 0' is false",)


def test_decision_is_deterministic_and_serialisable() -> None:
    policy = parse(RULES)
    assessment = assess(0.9, CONFLICT, retrieval_top_score=0.1, answer_in_passages=None)
    first, second = decide(assessment, policy), decide(assessment, policy)
    assert first == second
    assert isinstance(first, Decision)
    record = first.to_dict()
    assert json.loads(json.dumps(record)) == {
        "action": "hedge",
        "rule": "knowledge-conflict",
        "reasons": [
            "flag knowledge_conflict is set",
            "rule 'weak-retrieval' did not match; it had no value for answer_in_passages",
        ],
        "policy_name": "rules",
        "policy_hash": policy.content_hash,
    }


def test_assessment_validates_and_freezes_its_inputs() -> None:
    signals: dict[str, float | None] = {"cg_min": 0.5}
    flags = {"no_passages"}
    assessment = Assessment(0.5, signals, flags)  # type: ignore[arg-type]
    signals["cg_min"] = -1.0
    flags.add("model_abstained")
    assert assessment.signals["cg_min"] == 0.5
    assert assessment.flags == frozenset({"no_passages"})
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="confidence must be in"):
            Assessment(bad, {})
    with pytest.raises(TypeError, match="must be a number"):
        Assessment(True, {})


# --------------------------------------------------------------------------- loader errors

VALID_HEAD = """\
version: 1
name: broken
thresholds: {answer: 0.5, hedge: 0.3, otherwise: defer}
"""


def with_rule(when: str, action: str = "defer") -> str:
    """A policy with one rule: its ``when`` on line 6, its action on line 7."""
    return VALID_HEAD + f"rules:\n  - name: a\n    when: {when}\n    action: {action}\n"


BROKEN: list[tuple[str, str, int, list[str]]] = [
    (
        "yaml-syntax",
        "version: 1\nname: x\nthresholds:\n  answer: 0.5\n hedge: 0.3\n",
        5,
        ["invalid YAML", "while parsing a block mapping at line 1"],
    ),
    (
        "unclosed-flow-mapping",
        with_rule("{flag: model_abstained"),
        7,
        ["invalid YAML", "flow mapping at line 6"],
    ),
    ("empty-file", "", 1, ["the policy is empty"]),
    ("only-comments", "# nothing here\n\n", 1, ["the policy is empty"]),
    ("top-level-list", "- version: 1\n- name: x\n", 1, ["must be a mapping", "got a list"]),
    ("top-level-scalar", "just words\n", 1, ["must be a mapping", "'just words'"]),
    (
        "unsupported-version",
        "version: 2\nname: x\nfoo: 1\n",
        1,
        ["unsupported policy version 2", "supported versions: 1"],
    ),
    ("version-as-string", 'version: "1"\n', 1, ["unsupported policy version '1'"]),
    (
        "missing-version",
        "name: x\nthresholds: {answer: 0.5, hedge: 0.3, otherwise: defer}\n",
        1,
        ["missing required key 'version'"],
    ),
    (
        "unknown-top-level-key",
        "version: 1\nname: x\nthresholdz: {answer: 0.5, hedge: 0.3, otherwise: defer}\n",
        3,
        [
            "unknown key 'thresholdz'",
            "did you mean 'thresholds'?",
            "valid keys here: version, name",
        ],
    ),
    (
        "wrong-type-number",
        "version: 1\nname: x\nthresholds:\n  answer: high\n  hedge: 0.3\n  otherwise: defer\n",
        4,
        ["thresholds.answer: expected a number, got 'high'"],
    ),
    (
        "wrong-type-mapping",
        "version: 1\nname: x\nthresholds: 0.5\n",
        3,
        ["thresholds: expected a mapping, got 0.5"],
    ),
    ("wrong-type-list", VALID_HEAD + "rules: {name: a}\n", 4, ["rules: expected a list"]),
    (
        "boolean-threshold",
        "version: 1\nname: x\nthresholds: {answer: yes, hedge: 0.3, otherwise: defer}\n",
        3,
        ["expected a number, got the boolean true"],
    ),
    (
        "threshold-out-of-range",
        "version: 1\nname: x\nthresholds: {answer: 1.5, hedge: 0.3, otherwise: defer}\n",
        3,
        ["thresholds.answer", "less than or equal to 1"],
    ),
    (
        "hedge-above-answer",
        "version: 1\nname: x\nthresholds:\n  answer: 0.5\n  hedge: 0.7\n  otherwise: defer\n",
        5,
        ["the hedge threshold 0.7 is above the answer threshold 0.5"],
    ),
    (
        "unknown-otherwise",
        "version: 1\nname: x\nthresholds:\n  answer: 0.5\n  hedge: 0.3\n  otherwise: hedge\n",
        6,
        ["unknown action 'hedge' for thresholds.otherwise; valid actions: defer, escalate"],
    ),
    (
        "unknown-action",
        with_rule("{flag: model_abstained}", "refuse"),
        7,
        ["unknown action 'refuse'; valid actions: answer, hedge, defer, escalate"],
    ),
    (
        "unknown-signal",
        with_rule("{signal: retrieval_top, lt: 0.2}"),
        6,
        [
            "unknown signal 'retrieval_top'",
            "did you mean 'retrieval_top_score'?",
            "valid signals: answer_in_passages",
        ],
    ),
    (
        "flag-used-as-signal",
        with_rule("{signal: no_passages, eq: 1}"),
        6,
        ["'no_passages' is a flag: write {flag: no_passages}"],
    ),
    (
        "unknown-flag",
        with_rule("\n      not:\n        flag: knowledge_conflit"),
        8,
        [
            "unknown flag 'knowledge_conflit'",
            "did you mean 'knowledge_conflict'?",
            "valid flags: injected_answer, knowledge_conflict, model_abstained, no_passages",
        ],
    ),
    (
        "two-comparisons",
        with_rule("{signal: cg_min, lt: 0.1, gt: -1}"),
        6,
        ["needs exactly one comparison", "found 2: lt, gt"],
    ),
    (
        "no-comparison",
        with_rule("{signal: cg_min}"),
        6,
        ["needs exactly one comparison", "found none"],
    ),
    (
        "misspelt-comparison",
        with_rule("{signal: cg_min, lte: 0.1}"),
        6,
        ["unknown key 'lte' in rules[0].when", "did you mean 'lt'?"],
    ),
    (
        "misspelt-condition-key",
        with_rule(
            "\n      all:\n        - {signal: cg_min, lt: 0}\n        - {sigal: cg_min, lt: 0}"
        ),
        9,
        [
            "a condition needs one of the keys signal, flag, all, any, not",
            "sigal (did you mean 'signal'?)",
        ],
    ),
    (
        "condition-not-a-mapping",
        with_rule("model_abstained"),
        6,
        ["a condition must be a mapping", "got str 'model_abstained'"],
    ),
    (
        "two-condition-kinds",
        with_rule("{flag: no_passages, signal: cg_min, lt: 0}"),
        6,
        ["this one has signal and flag"],
    ),
    (
        "empty-any",
        with_rule("{any: []}"),
        6,
        ["'any' needs at least one condition"],
    ),
    (
        "missing-when",
        VALID_HEAD + "rules:\n  - name: a\n    action: defer\n",
        5,
        ["missing required key 'when' in rules[0]"],
    ),
    (
        "duplicate-rule-names",
        with_rule("{flag: no_passages}")
        + "  - name: a\n    when: {flag: model_abstained}\n    action: defer\n",
        8,
        ["duplicate rule name 'a'", "must be unique"],
    ),
    (
        "bad-rule-name",
        with_rule("{flag: no_passages}").replace("name: a", "name: 'threshold:answer'"),
        5,
        ["invalid rule name 'threshold:answer'"],
    ),
    (
        "unknown-template-placeholder",
        VALID_HEAD + 'actions:\n  hedge:\n    template: "{answer} ({cavaet})"\n',
        6,
        [
            "unknown placeholder {cavaet}",
            "did you mean 'caveat'?",
            "valid placeholders: {answer}, {caveat}, {sources}, {question}, {parametric_answer}",
        ],
    ),
    (
        "attribute-placeholder",
        VALID_HEAD + 'actions:\n  hedge: {template: "{answer.__class__}"}\n',
        5,
        ["unknown placeholder {answer.__class__}"],
    ),
    (
        "template-without-answer",
        VALID_HEAD + 'actions:\n  hedge: {template: "{caveat}"}\n',
        5,
        ["must contain {answer}"],
    ),
    (
        "template-syntax",
        VALID_HEAD + 'actions:\n  hedge: {template: "{answer"}\n',
        5,
        ["not a valid format string"],
    ),
    (
        "no-escalation-targets",
        VALID_HEAD + "actions:\n  escalate: {targets: []}\n",
        5,
        ["at least one target"],
    ),
    (
        "on-failure",
        VALID_HEAD + "actions:\n  escalate: {on_failure: answer}\n",
        5,
        ["unknown action 'answer' for escalate.on_failure; valid actions: defer"],
    ),
    (
        "misspelt-action-settings",
        VALID_HEAD + "actions:\n  defer: {mesage: no}\n",
        5,
        ["unknown key 'mesage' in actions.defer", "did you mean 'message'?"],
    ),
    (
        "duplicate-yaml-key",
        "version: 1\nname: x\nname: y\n",
        3,
        ["duplicate key 'name' (first given at line 2)"],
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_policies_report_message_and_line(
    text: str, line: int, fragments: list[str]
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="policy.yaml", signal_names=SIGNALS, flag_names=FLAGS)
    matching = [
        issue for issue in caught.value.errors if all(f in issue.message for f in fragments)
    ]
    assert matching, str(caught.value)
    assert matching[0].line == line, str(caught.value)
    assert f"policy.yaml:{line}:{matching[0].column}: " in str(caught.value)


def test_error_classes() -> None:
    with pytest.raises(PolicyLoadError):
        parse_policy("a: [", signal_names=SIGNALS, flag_names=FLAGS)
    with pytest.raises(PolicyValidationError):
        parse_policy("version: 1\n", signal_names=SIGNALS, flag_names=FLAGS)
    assert issubclass(PolicyNotFoundError, PolicyLoadError)
    assert issubclass(PolicyLoadError, PolicyError)
    assert issubclass(PolicyValidationError, PolicyError)
    assert issubclass(PolicyNotCertifiedError, PolicyError)


@pytest.mark.parametrize(
    ("issue", "source", "shown"),
    [
        (PolicyIssue(12, 13, "bad"), "p.yaml", "p.yaml:12:13: bad"),
        (PolicyIssue(12, None, "bad"), "p.yaml", "p.yaml:12: bad"),
        (PolicyIssue(None, None, "bad"), "p.yaml", "p.yaml: bad"),
        (PolicyIssue(12, 13, "bad"), None, "bad"),
        (PolicyIssue(2, 1, "bad", "base.yaml"), "p.yaml", "base.yaml:2:1: bad"),
        (PolicyIssue(2, 1, "two\nlines"), "p.yaml", "p.yaml:2:1: two lines"),
    ],
)
def test_issues_print_in_the_linter_form(
    issue: PolicyIssue, source: str | None, shown: str
) -> None:
    assert issue.format(source) == shown
    assert str(PolicyError([issue, issue], source=source)) == f"{shown}\n{shown}"


def test_all_errors_are_collected_in_line_order() -> None:
    text = VALID_HEAD.replace("0.3", "0.9") + (
        "rules:\n"
        "  - name: a\n"
        "    when: {signal: cg_mni, lt: 0}\n"
        "    action: refuse\n"
        "actions:\n"
        "  hedge: {template: '{anwser}'}\n"
    )
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(text, source="p.yaml", signal_names=SIGNALS, flag_names=FLAGS)
    lines = [issue.line for issue in caught.value.errors]
    assert lines == [3, 6, 7, 9]
    assert str(caught.value).count("\n") == 3
    assert str(caught.value).splitlines()[1].startswith("p.yaml:6:20: unknown signal")


def test_load_policy_reads_files_and_names_them_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(VALID_HEAD, encoding="utf-8")
    policy = load_policy(good, signal_names=SIGNALS, flag_names=FLAGS)
    assert policy.name == "broken"
    assert load_policy(str(good), signal_names=SIGNALS, flag_names=FLAGS) == policy

    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID_HEAD + "rulez: []\n", encoding="utf-8")
    with pytest.raises(PolicyValidationError, match=rf"^{bad}:4:1: unknown key 'rulez'"):
        load_policy(bad, signal_names=SIGNALS, flag_names=FLAGS)

    with pytest.raises(PolicyLoadError, match="cannot read the policy file"):
        load_policy(tmp_path / "absent.yaml", signal_names=SIGNALS, flag_names=FLAGS)

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyLoadError, match="not UTF-8"):
        load_policy(latin1, signal_names=SIGNALS, flag_names=FLAGS)


def test_names_are_checked_only_against_what_the_caller_measures() -> None:
    text = (
        VALID_HEAD + "rules:\n  - {name: a, when: {signal: mean_logprob, lt: -3}, action: hedge}\n"
    )
    assert parse_policy(text, signal_names=SIGNALS, flag_names=FLAGS).signal_names() == {
        "mean_logprob"
    }
    with pytest.raises(PolicyValidationError, match="unknown signal 'mean_logprob'"):
        parse_policy(text, signal_names={"cg_min"}, flag_names=FLAGS)
    # confidence is always a valid signal name, and is not reported as a measured signal
    always = (
        VALID_HEAD + "rules:\n  - {name: a, when: {signal: confidence, lt: 0.4}, action: defer}\n"
    )
    assert parse_policy(always, signal_names=(), flag_names=()).signal_names() == frozenset()
    # The schema alone (no validation context) does not know the names, so it accepts any.
    unchecked = Policy.model_validate(yaml.safe_load(text.replace("mean_logprob", "anything")))
    assert unchecked.signal_names() == {"anything"}


# --------------------------------------------------------------------------- bundled policies


@pytest.mark.parametrize("name", ["balanced", "strict", "lenient", "support-bot"])
def test_bundled_policies_load_and_validate(name: str) -> None:
    path = bundled_policy_path(name)
    assert path.name == f"{name}.yaml" and path.is_file()
    policy = load_policy(path, signal_names=SIGNALS, flag_names=FLAGS)
    assert policy.name == name
    assert policy.signal_names() <= SIGNALS
    assert policy.flag_names() == FLAGS
    assert policy.actions.escalate.target_names() == ("larger",)


def test_bundled_policies_differ_as_documented() -> None:
    default = load_policy(bundled_policy_path("balanced"), signal_names=SIGNALS, flag_names=FLAGS)
    strict = load_policy(bundled_policy_path("strict"), signal_names=SIGNALS, flag_names=FLAGS)
    assert strict.thresholds.answer > default.thresholds.answer
    assert strict.thresholds.hedge > default.thresholds.hedge
    conflict = assess(0.9, CONFLICT)
    assert decide(conflict, default).action is Action.HEDGE
    assert decide(conflict, strict).action is Action.ESCALATE
    assert decide(assess(0.6), default).action is Action.ANSWER
    assert decide(assess(0.6), strict).action is Action.HEDGE


def test_unknown_bundled_policy_lists_the_bundled_names() -> None:
    with pytest.raises(PolicyNotFoundError) as caught:
        bundled_policy_path("balanse")
    assert "did you mean 'balanced'?" in str(caught.value)
    assert "bundled policies: balanced, lenient, strict, support-bot" in str(caught.value)
    with pytest.raises(PolicyNotFoundError):
        bundled_policy_path("../loader")


# --------------------------------------------------------------------------- content hash

HASHED = """\
version: 1
name: hashed
thresholds:
  answer: 0.55
  hedge: 0.30
  otherwise: escalate
rules:
  - name: weak-retrieval
    when:
      all:
        - {signal: retrieval_top_score, lt: 0.25}
        - {signal: answer_in_passages, lt: 0.5}
    action: defer
"""

REFORMATTED = """\
# The same policy, written differently: comments, flow style, key order, number spelling,
# and the default action settings spelled out.
name: "hashed"
rules: [{action: defer, name: weak-retrieval, when: {all: [
    {lt: 0.250, signal: retrieval_top_score},
    {signal: answer_in_passages, lt: 5.0e-1}]}}]
thresholds: {otherwise: escalate, hedge: 0.3, answer: 0.55}   # same numbers
version: 1
actions:
  defer:
    message: "I don't know: the documents I have do not support an answer to this question."
  escalate: {targets: [larger], on_failure: defer}
"""


def test_content_hash_ignores_formatting_and_tracks_meaning() -> None:
    original = parse(HASHED)
    assert len(original.content_hash) == 16
    int(original.content_hash, 16)
    assert parse(REFORMATTED).content_hash == original.content_hash
    assert (
        parse(HASHED.replace("answer: 0.55", "answer: 0.56")).content_hash != original.content_hash
    )
    assert parse(HASHED.replace("lt: 0.25", "le: 0.25")).content_hash != original.content_hash
    assert decide(assess(0.9), original).policy_hash == original.content_hash


# ---------------------------------------------------------------- the calibration block


def test_a_calibration_block_is_parsed() -> None:
    text = VALID_HEAD + (
        "calibration:\n"
        "  calibrator: cal.json\n"
        "  target_error: 0.1\n"
        "  delta: 0.05\n"
        "  fitted_on: squad2/gold split=calibrate seed=0 n=300\n"
    )
    policy = parse_policy(text, signal_names=SIGNALS, flag_names=FLAGS)
    assert policy.calibration is not None
    assert policy.calibration.calibrator == "cal.json"
    assert (policy.calibration.target_error, policy.calibration.delta) == (0.1, 0.05)
    assert policy.calibration.method == "binomial"
    assert parse_policy(VALID_HEAD, signal_names=SIGNALS, flag_names=FLAGS).calibration is None


@pytest.mark.parametrize(
    ("block", "line", "fragment"),
    [
        ("  calibrator: c.json\n  target_error: 1.5\n  delta: 0.1\n", 6, "less than 1"),
        ("  calibrator: c.json\n  target_error: 0.1\n  delta: 0\n", 7, "greater than 0"),
        ("  target_error: 0.1\n  delta: 0.1\n", 4, "missing required key 'calibrator'"),
        (
            "  calibrator: c.json\n  target_error: 0.1\n  delta: 0.1\n  method: magic\n",
            8,
            "binomial",
        ),
        ("  calibrator: c.json\n  target_error: 0.1\n  delta: 0.1\n  alpha: 2\n", 8, "alpha"),
    ],
)
def test_bad_calibration_blocks_name_their_line(block: str, line: int, fragment: str) -> None:
    text = VALID_HEAD + "calibration:\n" + block
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(text, source="p.yaml", signal_names=SIGNALS, flag_names=FLAGS)
    assert any(fragment in issue.message and issue.line == line for issue in caught.value.errors), (
        str(caught.value)
    )
