"""Read policy files: YAML in, validated :class:`~policies.schema.Policy` out.

Every problem is reported with its file, line and column, and all problems found are reported
together in one :class:`~policies.errors.PolicyError`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies._yaml_errors import issue_from_error, position
from policies.conditions import validation_context
from policies.errors import (
    PolicyIssue,
    PolicyLoadError,
    PolicyNotFoundError,
    PolicyValidationError,
    did_you_mean,
)
from policies.schema import SUPPORTED_VERSIONS, Policy

_BUNDLED_DIR = "bundled"
_SUFFIX = ".yaml"


def load_policy(
    path: str | Path, *, signal_names: Collection[str], flag_names: Collection[str]
) -> Policy:
    """Read and validate the policy file at ``path``.

    ``signal_names`` and ``flag_names`` are the signals and flags the caller can measure;
    rules that reference any other name are rejected (``confidence`` is always valid).
    Raises :class:`PolicyLoadError` if the file cannot be read or parsed, and
    :class:`PolicyValidationError` if it is not a valid policy.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(
            f"cannot read the policy: it is not UTF-8 text ({exc.reason} at byte {exc.start})",
            source=source,
        ) from None
    except OSError as exc:
        raise PolicyLoadError(
            f"cannot read the policy file: {exc.strerror or exc}", source=source
        ) from None
    return parse_policy(text, source=source, signal_names=signal_names, flag_names=flag_names)


def parse_policy(
    text: str,
    *,
    source: str = "<string>",
    signal_names: Collection[str],
    flag_names: Collection[str],
) -> Policy:
    """Validate policy YAML given as text; ``source`` names it in error messages."""
    root, data, duplicates = _parse_yaml(text, source)
    if root is None:
        raise PolicyValidationError(
            [
                PolicyIssue(
                    1, 1, "the policy is empty; it needs at least version, name and thresholds"
                )
            ],
            source=source,
        )
    if not isinstance(data, dict):
        line, column = position(root)
        kind = "a list" if isinstance(data, list) else f"the single value {data!r}"
        message = (
            f"a policy must be a mapping with keys such as version, name, thresholds; got {kind}"
        )
        raise PolicyValidationError([PolicyIssue(line, column, message)], source=source)

    version_issue = _unsupported_version(root, data)
    if version_issue is not None:
        # Keys of another version's schema would only add noise: report the version alone.
        raise PolicyValidationError([version_issue], source=source)

    issues = duplicates
    try:
        policy = Policy.model_validate(data, context=validation_context(signal_names, flag_names))
    except ValidationError as exc:
        issues.extend(issue_from_error(error, root) for error in exc.errors())
    if issues:
        issues.sort(key=lambda issue: (issue.line or 0, issue.column or 0))
        raise PolicyValidationError(issues, source=source)
    return policy


def bundled_policy_path(name: str) -> Path:
    """Path of the policy shipped with the package as ``policies/bundled/<name>.yaml``."""
    names = _bundled_names()
    if name not in names:
        raise PolicyNotFoundError(
            f"no bundled policy named {name!r}{did_you_mean(name, names)}; "
            f"bundled policies: {', '.join(names)}"
        )
    return Path(str(resources.files(__package__).joinpath(_BUNDLED_DIR, name + _SUFFIX)))


def _bundled_names() -> list[str]:
    folder = resources.files(__package__).joinpath(_BUNDLED_DIR)
    return sorted(
        entry.name[: -len(_SUFFIX)]
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIX)
    )


def _parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any, list[PolicyIssue]]:
    """The node tree (for positions), the plain data built from it, and repeated keys."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None, []
        # Constructing flattens merge keys in place, so look for repeated keys first.
        duplicates = list(_duplicate_keys(root))
        return root, loader.construct_document(root), duplicates
    except yaml.MarkedYAMLError as exc:
        raise PolicyLoadError([_syntax_issue(exc)], source=source) from None
    except yaml.YAMLError as exc:
        raise PolicyLoadError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()


def _syntax_issue(exc: yaml.MarkedYAMLError) -> PolicyIssue:
    mark = exc.problem_mark or exc.context_mark
    problem, context = exc.problem or "syntax error", exc.context
    if context and exc.context_mark is not None:
        context += f" at line {exc.context_mark.line + 1}"
    if not context:
        message = f"invalid YAML: {problem}"
    elif context.startswith("while"):
        message = f"invalid YAML: {problem} ({context})"
    else:
        message = f"invalid YAML: {context}, {problem}"
    if mark is None:
        return PolicyIssue(None, None, message)
    return PolicyIssue(mark.line + 1, mark.column + 1, message)


def _walk(root: yaml.Node) -> Iterator[yaml.Node]:
    """Every node once, aliases (shared nodes) included only once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in reversed(node.value):
                stack.extend((value_node, key_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))


def _duplicate_keys(root: yaml.Node) -> Iterator[PolicyIssue]:
    """PyYAML silently keeps the last of repeated keys; a policy must not be ambiguous."""
    for node in _walk(root):
        if not isinstance(node, yaml.MappingNode):
            continue
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            key = key_node.value
            if key == "<<" or not isinstance(key, str):
                continue
            line, column = position(key_node)
            if key in first_line:
                yield PolicyIssue(
                    line, column, f"duplicate key {key!r} (first given at line {first_line[key]})"
                )
            else:
                first_line[key] = line


def _unsupported_version(root: yaml.Node, data: dict[Any, Any]) -> PolicyIssue | None:
    if "version" not in data:
        return None
    version = data["version"]
    if type(version) is int and version in SUPPORTED_VERSIONS:
        return None
    node = next((v for k, v in root.value if getattr(k, "value", None) == "version"), root)
    line, column = position(node)
    supported = ", ".join(map(str, SUPPORTED_VERSIONS))
    return PolicyIssue(
        line,
        column,
        f"unsupported policy version {version!r}; supported versions: {supported}",
    )
