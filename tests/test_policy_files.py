"""Policy files as a whole: extends, tenants, the broken-file corpus, the JSON Schema and
thresholds given as a risk target."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
import yaml

from guardrail.assessment import FLAG_NAMES
from guardrail.calibration import LogisticCalibrator
from guardrail.policy_runtime import load_policies, risk_resolver
from guardrail.signals import SIGNAL_NAMES
from policies import (
    Action,
    Assessment,
    PolicyError,
    PolicyNotCertifiedError,
    PolicyValidationError,
    bundled_policy_path,
    certify,
    decide,
)
from policies.json_schema import policy_json_schema
from policies.loader import load_policy_set, parse_policy_set
from policies.schema import Certificate, RiskTarget, Thresholds

BROKEN = Path(__file__).parent / "fixtures" / "policies" / "broken"
BASE = """\
version: 1
name: base
thresholds: {answer: 0.6, hedge: 0.3, otherwise: escalate}
rules:
  - name: abstained
    when: {flag: model_abstained}
    action: defer
actions:
  defer: {message: "Base says no."}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path):  # type: ignore[no-untyped-def]
    return load_policy_set(path, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)


# --------------------------------------------------------------------------- tenants


def test_tenant_overrides_merge_onto_the_base(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        BASE
        + """\
tenants:
  acme:
    thresholds: {answer: 0.8}
    actions: {escalate: {targets: [larger, largest]}}
  beta:
    extends: acme
    mode: shadow
    rules: []
  named:
    name: custom-name
""",
    )
    policies = load(path)
    base, acme, beta = policies.base, policies.tenants["acme"], policies.tenants["beta"]
    # Mappings merge key by key: acme keeps the base's hedge and otherwise.
    assert (acme.thresholds.answer, acme.thresholds.hedge) == (0.8, 0.3)
    assert acme.thresholds.otherwise is Action.ESCALATE
    assert acme.actions.escalate.target_names() == ("larger", "largest")
    assert acme.actions.defer.message == "Base says no."
    assert [r.name for r in acme.rules] == ["abstained"]
    # beta builds on acme; a list (rules) replaces the inherited one whole.
    assert beta.thresholds.answer == 0.8 and beta.mode == "shadow" and beta.rules == ()
    # Names default to base.tenant; a tenant may name itself.
    assert (acme.name, beta.name, policies.tenants["named"].name) == (
        "base.acme",
        "base.beta",
        "custom-name",
    )
    # Every merged policy has its own hash; the base is untouched by its tenants.
    hashes = {p.content_hash for p in policies.all().values()}
    assert len(hashes) == 4
    assert base.thresholds.answer == 0.6 and base.mode == "enforce"
    assert policies.policy_for("acme") is acme
    assert policies.policy_for("someone-else") is base
    assert policies.policy_for(None) is base


def test_tenant_decisions_differ_as_their_overrides_say(tmp_path: Path) -> None:
    policies = load(
        write(tmp_path, "p.yaml", BASE + "tenants:\n  acme: {thresholds: {answer: 0.8}}\n")
    )
    middling = Assessment(0.7, {})
    assert decide(middling, policies.base).action is Action.ANSWER
    decision = decide(middling, policies.tenants["acme"])
    assert decision.action is Action.HEDGE
    assert decision.policy_name == "base.acme"
    assert decision.policy_hash == policies.tenants["acme"].content_hash


def test_extends_a_file_and_a_bundled_policy(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    (tmp_path / "teams").mkdir()
    child = write(
        tmp_path / "teams",
        "child.yaml",
        """\
        extends: ../base.yaml
        name: child
        thresholds: {hedge: 0.5}
        """,
    )
    policy = load(child).base
    assert policy.name == "child"
    assert (policy.thresholds.answer, policy.thresholds.hedge) == (0.6, 0.5)
    assert policy.actions.defer.message == "Base says no."
    on_bundled = load(write(tmp_path, "b.yaml", "extends: strict\nname: my-strict\n")).base
    strict = load(bundled_policy_path("strict")).base
    assert on_bundled.rules == strict.rules and on_bundled.thresholds == strict.thresholds
    assert on_bundled.content_hash != strict.content_hash  # the name differs


def test_an_error_in_a_base_file_points_into_that_file(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE.replace("otherwise: escalate", "otherwise: answer"))
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: child\n")
    with pytest.raises(PolicyError) as caught:
        load(child)
    issue = caught.value.errors[0]
    assert issue.source == str(tmp_path / "base.yaml") and issue.line == 3
    assert "unknown action 'answer' for thresholds.otherwise" in str(caught.value)


def test_a_broken_base_is_reported_once_not_once_per_tenant(tmp_path: Path) -> None:
    text = BASE.replace("0.3", "0.9") + "tenants:\n  a: {}\n  b: {mode: shadow}\n"
    with pytest.raises(PolicyError) as caught:
        load(write(tmp_path, "p.yaml", text))
    assert len(caught.value.errors) == 1, str(caught.value)


def _expectation(path: Path) -> tuple[str | None, int, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    found = re.fullmatch(r"# expect: (?:in (\S+) )?line (\d+): (.+)", first)
    assert found, f"{path.name} must start with '# expect: [in FILE] line N: message'"
    return found.group(1), int(found.group(2)), found.group(3)


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.yaml")), ids=lambda p: p.stem)
def test_broken_policy_corpus(path: Path) -> None:
    """Each file names the error it must produce, its line and (if not itself) its file."""
    in_file, line, fragment = _expectation(path)
    with pytest.raises(PolicyError) as caught:
        load(path)
    matching = [issue for issue in caught.value.errors if fragment in issue.message]
    assert matching, str(caught.value)
    issue = matching[0]
    assert issue.line == line, str(caught.value)
    assert Path(issue.source or str(path)).name == (in_file or path.name)
    # Every line of the message names a file and a position.
    for text in str(caught.value).splitlines():
        assert re.match(r"\S+\.yaml:\d+:\d+: ", text), text


# --------------------------------------------------------------------------- JSON Schema


def test_the_schema_accepts_every_bundled_and_calibrated_policy() -> None:
    schema = policy_json_schema(SIGNAL_NAMES, FLAG_NAMES)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    files = [bundled_policy_path(n) for n in ("balanced", "strict", "lenient", "support-bot")]
    files += sorted((Path(__file__).parents[1] / "policies" / "calibrated").glob("*.yaml"))
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        errors = [e.message for e in validator.iter_errors(data)]
        assert not errors, (path.name, errors)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"thresolds": {}}, "'thresolds' was unexpected"),
        ({"mode": "dry-run"}, "'dry-run' is not one of"),
        (
            {"rules": [{"name": "r", "when": {"signal": "cg_mena", "lt": 0}, "action": "defer"}]},
            "'cg_mena' is not one of",
        ),
    ],
)
def test_the_schema_rejects_what_the_loader_rejects(change: dict, fragment: str) -> None:
    data = yaml.safe_load(BASE) | change
    validator = jsonschema.Draft202012Validator(policy_json_schema(SIGNAL_NAMES, FLAG_NAMES))
    messages = [e.message for e in validator.iter_errors(data)]
    assert any(fragment in m for m in messages) or any(
        fragment in str(e.context) for e in validator.iter_errors(data)
    ), messages


# --------------------------------------------------------------------------- risk targets


def calibrator_with_certification(folder: Path, scores: np.ndarray, correct: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    rows = [{"mean_logprob": float(v)} for v in rng.normal(size=40)]
    labels = [bool(v > 0) for v in rng.normal(size=40)]
    calibrator = LogisticCalibrator(("mean_logprob",)).fit(rows, labels)
    calibrator.metadata = {
        "certification": {
            "data": "synthetic",
            "scores": [float(s) for s in scores],
            "correct": [bool(c) for c in correct],
            "eligible": [True] * len(scores),
        }
    }
    return calibrator.save(folder / "cal.json")


RISK_POLICY = """\
version: 1
name: risky
thresholds: {max_error_rate: 0.1, delta: 0.1, hedge_max_error_rate: 0.3}
calibration: {calibrator: cal.json}
"""


def test_risk_target_is_certified_from_the_artifact(tmp_path: Path) -> None:
    # 400 scores; above 0.5 the answers are right 97% of the time, below 50%.
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=400)
    correct = np.where(scores > 0.5, rng.uniform(size=400) < 0.97, rng.uniform(size=400) < 0.5)
    calibrator_with_certification(tmp_path, scores, correct)
    policy = load_policies(write(tmp_path, "risky.yaml", RISK_POLICY)).base
    certificate = policy.thresholds.certified
    assert certificate is not None and certificate.answer_feasible and certificate.hedge_feasible
    assert 0.3 < policy.thresholds.answer < 0.7
    assert policy.thresholds.hedge <= policy.thresholds.answer
    answered = scores >= policy.thresholds.answer
    assert (~correct[answered]).mean() <= 0.1
    assert "synthetic" in certificate.message
    assert decide(Assessment(0.99, {}), policy).action is Action.ANSWER


def test_an_infeasible_risk_target_defers_everything(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scores = rng.uniform(size=200)
    correct = rng.uniform(size=200) < 0.5  # a coin: no threshold keeps error <= 10%
    calibrator_with_certification(tmp_path, scores, correct)
    policy = load_policies(write(tmp_path, "risky.yaml", RISK_POLICY)).base
    assert policy.thresholds.certified is not None
    assert not policy.thresholds.certified.answer_feasible
    for confidence in (0.0, 0.5, 1.0):
        decision = decide(Assessment(confidence, {}), policy)
        assert decision.action is Action.DEFER
        assert "no threshold meets the policy's risk target" in decision.reasons[0]


def test_a_risk_target_needs_certification_data(tmp_path: Path) -> None:
    calibrator = LogisticCalibrator(("mean_logprob",)).fit(
        [{"mean_logprob": v} for v in (-1.0, -0.5, 0.5, 1.0)], [False, False, True, True]
    )
    calibrator.save(tmp_path / "cal.json")
    path = write(tmp_path, "risky.yaml", RISK_POLICY)
    with pytest.raises(PolicyValidationError) as caught:
        load_policies(path)
    assert "holds no certification data" in str(caught.value)
    # Certification failed, so the error points at the thresholds it was certifying.
    assert str(caught.value).startswith(f"{path}:3:13: calibrator ")


def test_a_risk_target_loads_uncertified_reading_nothing_but_the_yaml(tmp_path: Path) -> None:
    """Loading is pure: the calibrator a risk target names is not even opened."""
    path = write(tmp_path, "risky.yaml", RISK_POLICY)
    (tmp_path / "cal.json").write_text("not a calibrator", encoding="utf-8")
    opened: list[str] = []
    with _recording_opened_files(opened):
        policy = load_policy_set(path, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES).base
    assert opened == [str(path)]
    assert policy.thresholds == RiskTarget(max_error_rate=0.1, delta=0.1, hedge_max_error_rate=0.3)
    assert policy.calibration is not None and policy.calibration.calibrator == "cal.json"
    # The same from text, with no file and no calibrator anywhere.
    parsed = parse_policy_set(RISK_POLICY, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)
    assert parsed.base.thresholds == policy.thresholds


_OPENING: list[list[str]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _OPENING and isinstance(args[0], str | Path):
        _OPENING[-1].append(str(args[0]))


@contextlib.contextmanager
def _recording_opened_files(opened: list[str]) -> Iterator[None]:
    """Every file opened inside the block is appended to ``opened`` (an audit hook cannot be
    removed, so one hook records into whichever list is active)."""
    if not hasattr(_audit, "installed"):
        sys.addaudithook(_audit)
        _audit.installed = True  # type: ignore[attr-defined]
    _OPENING.append(opened)
    try:
        yield
    finally:
        _OPENING.pop()


def test_decide_refuses_a_policy_whose_risk_target_is_not_certified() -> None:
    policy = parse_policy_set(RISK_POLICY, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES).base
    for confidence in (0.0, 1.0):
        with pytest.raises(PolicyNotCertifiedError, match="certify the loaded policies first"):
            decide(Assessment(confidence, {}), policy)


CERTIFIED = Thresholds(
    answer=0.7,
    hedge=0.4,
    otherwise=Action.DEFER,
    certified=Certificate(
        max_error_rate=0.1,
        delta=0.1,
        answer_feasible=True,
        hedge_feasible=True,
        message="certified on test data",
    ),
)
TENANTS = """\
tenants:
  inherits: {mode: shadow}
  own: {thresholds: {max_error_rate: 0.2}}
"""


def test_certify_replaces_each_risk_target_with_what_the_resolver_certifies() -> None:
    """certify is pure: it calls the caller's resolver once per distinct target."""
    loaded = parse_policy_set(
        RISK_POLICY + TENANTS, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES
    )
    asked: list[tuple[RiskTarget, str]] = []

    def resolve(target: RiskTarget, calibrator: str) -> Thresholds:
        asked.append((target, calibrator))
        return CERTIFIED.model_copy(update={"answer": 1 - target.max_error_rate})

    policies = certify(loaded, resolve)
    assert [target.max_error_rate for target, _ in asked] == [0.1, 0.2]
    assert {calibrator for _, calibrator in asked} == {"cal.json"}
    assert policies.base.thresholds == CERTIFIED.model_copy(update={"answer": 0.9})
    assert policies.tenants["inherits"].thresholds == policies.base.thresholds
    assert policies.tenants["own"].thresholds == CERTIFIED.model_copy(update={"answer": 0.8})
    # Fixed numbers need no certificate: such policies come back as they were.
    fixed = load_policy_set(
        bundled_policy_path("support-bot"), signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES
    )
    assert certify(fixed, resolve).all() == fixed.all() and len(asked) == 2
    # The certified policy is the policy validated with the certified numbers.
    written = RISK_POLICY.replace(
        "{max_error_rate: 0.1, delta: 0.1, hedge_max_error_rate: 0.3}",
        json.dumps(CERTIFIED.model_copy(update={"answer": 0.9}).model_dump(mode="json")),
    )
    direct = parse_policy_set(written, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES).base
    assert policies.base == direct and policies.base.content_hash == direct.content_hash
    assert decide(Assessment(0.95, {}), policies.base).action is Action.ANSWER


def test_a_resolver_error_points_at_the_thresholds_it_certifies(tmp_path: Path) -> None:
    path = write(tmp_path, "risky.yaml", RISK_POLICY + TENANTS)

    def resolve(target: RiskTarget, calibrator: str) -> Thresholds:
        raise ValueError(f"cannot certify {target.max_error_rate:g} with {calibrator}")

    loaded = load_policy_set(path, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)
    with pytest.raises(PolicyValidationError) as caught:
        certify(loaded, resolve)
    # The inherited target is reported once, at the base; the tenant's own where it wrote it.
    assert str(caught.value).splitlines() == [
        f"{path}:3:13: cannot certify 0.1 with cal.json",
        f"{path}:7:21: tenant 'own': cannot certify 0.2 with cal.json",
    ]


# Content hashes and thresholds of the committed calibrated policies, as certified when
# certification still ran inside validation: moving it to its own step changes neither.
CALIBRATED = {
    "conflictqa-counter": ("12ae61333b2a0ead", 1.0, 0.821161),
    "selfaware-open": ("d87a76bdefc4c813", 1.0, 1.0),
    "squad11-gold": ("1f98dd6df8252637", 1.0, 0.858836),
    "squad2-gold-n1000": ("b91acb025196d5db", 1.0, 1.0),
    "squad2-gold": ("551cd93e400885c3", 1.0, 1.0),
    "squad2-open": ("2606b168d773b379", 1.0, 1.0),
}


def test_calibrated_policies_in_the_repository_load_with_their_certificates() -> None:
    folder = Path(__file__).parents[1] / "policies" / "calibrated"
    for path in sorted(folder.glob("*.yaml")):
        loaded = load_policy_set(path, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)
        assert isinstance(loaded.base.thresholds, RiskTarget), path.name
        policy = certify(loaded, risk_resolver(path.parent)).base
        assert isinstance(policy.thresholds, Thresholds)
        certificate = policy.thresholds.certified
        assert certificate is not None, path.name
        stored = json.loads((folder / f"{path.stem}.calibrator.json").read_text())
        assert certificate.answer_feasible == stored["metadata"]["answer"]["feasible"]
        assert load_policies(path).base == policy
        if path.stem in CALIBRATED:
            numbers = (policy.content_hash, policy.thresholds.answer, policy.thresholds.hedge)
            assert numbers == CALIBRATED[path.stem], path.name
    assert set(CALIBRATED) <= {path.stem for path in folder.glob("*.yaml")}


def test_the_policy_examples_in_the_docs_are_valid() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "policies.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", docs, flags=re.DOTALL)
    complete = [b for b in blocks if b.startswith("version: 1")]
    assert len(complete) >= 2
    for block in complete:
        policies = parse_policy_set(
            block, source="docs/policies.md", signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES
        )
        assert policies.base.version == 1


def test_a_calibrated_policy_can_be_extended_from_another_folder(tmp_path: Path) -> None:
    """The calibrator path of a base file is relative to the base file, wherever the file
    that extends it lives."""
    calibrated = Path(__file__).parents[1] / "policies" / "calibrated" / "squad2-open.yaml"
    child = write(tmp_path, "mine.yaml", f"extends: {calibrated}\nname: mine\n")
    policy = load_policies(child).base
    base = load_policies(calibrated).base
    assert policy.thresholds == base.thresholds
    assert policy.calibration is not None
    assert (tmp_path / policy.calibration.calibrator).resolve() == (
        calibrated.parent / "squad2-open.calibrator.json"
    ).resolve()


def test_a_tenant_name_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="tenant names must be text; got 123"):
        load(write(tmp_path, "p.yaml", BASE + "tenants:\n  123: {mode: shadow}\n"))
