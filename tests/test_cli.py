"""The ``guardrail`` command line: user errors, exit codes and the ingest success path.

User errors must exit with status 2 and one stderr line ``guardrail: error: ...`` (no stack
trace), and must be noticed before any generator model is prepared: preparing one converts
a GGUF file on first use (about a minute). To make that checkable, the ``cli`` fixture
replaces ``prepare_model`` with a tripwire that raises ``ModelLoadAttempted``; nothing else
is replaced. The ingest tests use the real embedder on a three-file corpus.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import guardrail.cli
import guardrail.pipeline
from guardrail.cli import build_parser, main
from retrievers import PassageIndex, SentenceTransformerEmbedder


class ModelLoadAttempted(Exception):
    """Raised by the stand-in for ``prepare_model``: a generator was about to be prepared."""


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


def assert_user_error(result: Result, *fragments: str) -> str:
    """Exit 2 and exactly one stderr line ``guardrail: error: ...`` holding ``fragments``."""
    assert "Traceback" not in result.err
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("guardrail: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def assert_policy_error(result: Result, path: Path, *fragments: str) -> list[str]:
    """Exit 2 and each problem on its own stderr line ``FILE:LINE:COLUMN: message`` (the form
    editors jump to, no prefix), the lines together holding ``fragments``."""
    assert "Traceback" not in result.err
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    for line in lines:
        assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", line), line
    for fragment in fragments:
        assert fragment in result.err
    return lines


@pytest.fixture
def cli(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Run:
    """Run ``main`` in-process with an empty cache directory and the model tripwire."""

    def tripwire(cache_dir: Path, name: str, **_: object) -> Path:
        raise ModelLoadAttempted(f"{name!r} would be prepared before the input was validated")

    monkeypatch.setattr(guardrail.pipeline, "prepare_model", tripwire)
    monkeypatch.setattr(guardrail.cli, "prepare_model", tripwire)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def bad_policy(tmp_path: Path) -> Path:
    path = tmp_path / "x" / "bad.yaml"
    path.parent.mkdir()
    path.write_text("version: 1\nname: [unclosed\n", encoding="utf-8")
    return path


CORPUS = {
    "cats.txt": "Cats are small domesticated felines that purr and hunt mice.",
    "rockets.md": "# Rockets\n\nRockets burn fuel to lift satellites into orbit around Earth.",
    "bread.txt": "Bread is baked from flour, water, yeast and salt in an oven.",
}


@dataclass(frozen=True)
class Ingested:
    index_dir: Path
    result: Result


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingested]:
    """``guardrail ingest`` of a three-file corpus, run once for the module."""
    root = tmp_path_factory.mktemp("corpus")
    files = []
    for name, text in CORPUS.items():
        (root / name).write_text(text, encoding="utf-8")
        files.append(str(root / name))
    index_dir = root / "idx"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["ingest", *files, "--index", str(index_dir)])
    yield Ingested(index_dir, Result(code, out.getvalue(), err.getvalue()))


# ---------------------------------------------------------------- ingest


def test_ingest_builds_an_index_that_loads(ingested: Ingested) -> None:
    result = ingested.result
    assert result.code == 0, result.err
    assert f"Index of 3 passages saved to {ingested.index_dir}" in result.out
    assert "Ingested 3 passages from 3 path(s)." in result.err
    index = PassageIndex.load(ingested.index_dir, SentenceTransformerEmbedder())
    assert len(index) == 3
    assert {p.source for p in index.passages} == set(CORPUS)
    assert index.search("What do rockets carry into orbit?", k=1)[0].source == "rockets.md"


def test_ingest_of_an_empty_file(cli: Run, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert_user_error(cli("ingest", str(empty)), str(empty), "empty corpus file")


def test_ingest_of_invalid_utf8(cli: Run, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"id": "a", "text": "ok"}\n\xff\xfe garbage\n')
    assert_user_error(cli("ingest", str(broken)), str(broken), "line 2", "not valid UTF-8")


def test_ingest_of_invalid_jsonl(cli: Run, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "text": "fine"}\nnot json at all\n', encoding="utf-8")
    line = assert_user_error(cli("ingest", str(broken)), str(broken))
    assert "line 2" in line


def test_ingest_of_a_missing_file(cli: Run, tmp_path: Path) -> None:
    assert_user_error(cli("ingest", str(tmp_path / "nope.txt")), "no such file or directory")


def test_ingest_with_no_paths(cli: Run) -> None:
    assert_user_error(cli("ingest"), "nothing to ingest")


# ---------------------------------------------------------------- ask: errors before models


def test_ask_with_a_missing_index(cli: Run) -> None:
    assert_user_error(
        cli("ask", "q", "--index", "/nonexistent/dir"), "no index at /nonexistent/dir"
    )


def test_ask_with_a_malformed_policy_file(cli: Run, bad_policy: Path) -> None:
    [line] = assert_policy_error(cli("ask", "q", "--policy", str(bad_policy)), bad_policy)
    assert line.startswith(f"{bad_policy}:3:1: invalid YAML")


def test_ask_with_a_missing_policy_file(cli: Run, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert_user_error(cli("ask", "q", "--policy", str(missing)), "does not exist")


def test_ask_with_an_unknown_bundled_policy(cli: Run) -> None:
    assert_user_error(
        cli("ask", "q", "--policy", "lenien"),
        "bundled policies: balanced, lenient, strict, support-bot",
    )


def test_ask_with_an_invalid_policy_reports_every_issue(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text("version: 1\nname: x\nthresholds: {answer: 2}\n", encoding="utf-8")
    result = cli("ask", "q", "--policy", str(path))
    lines = assert_policy_error(result, path, "'hedge'", "'otherwise'", "less than or equal to 1")
    assert len(lines) == 3


BAD_QUESTIONS = [
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="blank"),
    pytest.param("x" * 1001, "1001 characters; the limit is 1000", id="too-long"),
]


@pytest.mark.parametrize(("question", "message"), BAD_QUESTIONS)
def test_ask_bad_question_with_an_index(
    cli: Run, ingested: Ingested, question: str, message: str
) -> None:
    result = cli("ask", question, "--index", str(ingested.index_dir))
    assert_user_error(result, "question", message)


@pytest.mark.parametrize(("question", "message"), BAD_QUESTIONS)
def test_ask_bad_question_with_passages(cli: Run, question: str, message: str) -> None:
    assert_user_error(cli("ask", question, "--passage", "Some text."), "question", message)


def test_ask_empty_question_without_an_index_names_the_question(cli: Run) -> None:
    assert_user_error(cli("ask", ""), "question is empty")


def test_ask_with_passages_and_a_malformed_policy(cli: Run, bad_policy: Path) -> None:
    result = cli("ask", "q", "--passage", "Some text.", "--policy", str(bad_policy))
    assert_policy_error(result, bad_policy, "invalid YAML")


def test_ask_with_top_k_zero(cli: Run) -> None:
    assert_user_error(cli("ask", "q", "--top-k", "0"), "top_k")


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["ask"], id="no-question"),
        pytest.param(["ask", "q", "--top-k", "three"], id="top-k-not-a-number"),
        pytest.param(["ingest", "--max-words"], id="option-without-value"),
    ],
)
def test_argparse_errors_exit_2(
    cli: Run, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(*argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: guardrail")
    assert "error:" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- every command

COMMANDS = [
    ["prepare"],
    ["ingest"],
    ["ask"],
    ["demo"],
    ["serve"],
    ["eval"],
    ["calibrate"],
    ["policy"],
    ["policy", "check"],
    ["policy", "explain"],
    ["policy", "schema"],
    ["policy", "compare"],
    ["verifier"],
    ["verifier", "train"],
    ["verifier", "score"],
    ["verifier", "show"],
]
GROUPS = ("policy", "verifier")

# Each runnable command with its required arguments (nothing runs: they are only parsed).
RUNNABLE = [
    ["prepare"],
    ["ingest"],
    ["ask", "q"],
    ["demo"],
    ["serve"],
    ["eval", "--dataset", "squad2"],
    ["calibrate", "--dataset", "squad2", "--out", "x"],
    ["policy", "check", "balanced"],
    ["policy", "explain", "balanced", "--signals", "{}"],
    ["policy", "schema"],
    ["policy", "compare", "log.jsonl"],
    ["verifier", "train", "--out", "v.json"],
    ["verifier", "score", "q", "--passage", "p"],
    ["verifier", "show"],
]


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def choices(help_text: str) -> set[str]:
    """The subcommands a help text lists in its usage line's ``{a,b,...}``."""
    found = re.search(r"\{([a-z,-]+)\}", help_text)
    assert found, help_text
    return set(found.group(1).split(","))


def test_the_commands_listed_here_are_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert choices(help_of(capsys)) == {c[0] for c in COMMANDS if len(c) == 1}
    for group in GROUPS:
        listed = {c[1] for c in COMMANDS if len(c) == 2 and c[0] == group}
        assert choices(help_of(capsys, group)) == listed
    assert {tuple(argv[:2]) if argv[0] in GROUPS else (argv[0],) for argv in RUNNABLE} == {
        tuple(c) for c in COMMANDS if c[0] not in GROUPS or len(c) == 2
    }


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert help_of(capsys, *command).startswith(f"usage: guardrail {' '.join(command)} ")


@pytest.mark.parametrize("argv", RUNNABLE, ids=lambda argv: " ".join(argv[:2]))
def test_every_command_runs_as_func_of_its_arguments(argv: list[str]) -> None:
    # One dispatch: main() calls args.func(args), whatever the command.
    args = build_parser().parse_args(argv)
    assert list(inspect.signature(args.func).parameters) == ["args"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["eval", "--dataset", "squad2", "--n", "0"], "--n must be at least 1, got 0"),
        (["calibrate", "--dataset", "squad2", "--out", "x", "--n", "0"], "--n must be at least 1"),
        # Settings come from the one helper every command uses, options included.
        (["eval", "--dataset", "squad2", "--top-k", "0"], "top_k"),
        (
            ["calibrate", "--dataset", "squad2", "--out", "x", "--max-passage-words", "5"],
            "max_passage_words",
        ),
        (["policy", "check", "MISSING"], "does not exist"),
        (["policy", "explain", "MISSING", "--signals", "{}"], "does not exist"),
        (["policy", "explain", "balanced", "--signals", "[1]"], "must be a JSON object"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_user_errors_print_one_line_and_exit_2(
    cli: Run, tmp_path: Path, argv: list[str], fragment: str
) -> None:
    missing = str(tmp_path / "missing.yaml")
    result = cli(*(missing if arg == "MISSING" else arg for arg in argv))
    assert_user_error(result, fragment)


# ---------------------------------------------------------------- a real process


def guardrail_command() -> list[str]:
    script = Path(sys.executable).with_name("guardrail")
    return [str(script)] if script.exists() else [sys.executable, "-m", "guardrail.cli"]


@pytest.fixture
def process(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
    env["GUARDRAIL_CACHE_DIR"] = str(tmp_path / "cache")
    env["HF_HUB_OFFLINE"] = "1"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        # A timeout instead of a tripwire: an error path that reached a model would take
        # about a minute to convert it.
        return subprocess.run(
            [*guardrail_command(), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    return run


def test_process_exit_codes(
    process: Callable[..., subprocess.CompletedProcess[str]], bad_policy: Path
) -> None:
    done = process("ingest")
    assert_user_error(Result(done.returncode, done.stdout, done.stderr), "nothing to ingest")
    done = process("ask", "q", "--policy", str(bad_policy))
    assert_policy_error(Result(done.returncode, done.stdout, done.stderr), bad_policy, "YAML")
    usage = process("ask")
    assert usage.returncode == 2
    assert "the following arguments are required: question" in usage.stderr
    assert "Traceback" not in usage.stderr


def test_process_top_k_zero_is_a_clean_error(
    process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = process("ask", "q", "--top-k", "0")
    assert_user_error(Result(done.returncode, done.stdout, done.stderr), "top_k")
