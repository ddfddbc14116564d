"""Read policy files: YAML in, validated :class:`~policies.schema.Policy` out.

Every problem is reported with its file, line and column, and all problems found are reported
together in one :class:`~policies.errors.PolicyError`.

Loading is pure: it reads the policy files and nothing else. Thresholds given as a risk target
load as an uncertified :class:`~policies.schema.RiskTarget`; certifying them is the caller's
next step, :func:`policies.certification.certify` (guardrail's ``load_policies`` runs both).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies._layers import Layered, Loc, Origin, locate, merge
from policies._yaml_errors import issue_from_error, position, shown
from policies.conditions import _NAME_CHARS, validation_context
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


@dataclass(frozen=True)
class PolicySet:
    """A policy file, validated: its base policy and the policy of each tenant it names.

    Each tenant's policy is the base policy with the tenant's overrides merged on top (see
    :mod:`policies._layers` for the one merge rule), validated on its own after merging.
    """

    base: Policy
    tenants: Mapping[str, Policy]
    source: str
    layers: Mapping[str | None, Layered] = field(default_factory=dict, repr=False, compare=False)
    """The merged document each policy was validated from (base under ``None``), which knows
    where every value was written; empty for policies built in memory."""

    def policy_for(self, tenant: str | None) -> Policy:
        """The tenant's policy; the base policy for ``None`` or a tenant without overrides."""
        if tenant is None:
            return self.base
        return self.tenants.get(tenant, self.base)

    def all(self) -> dict[str | None, Policy]:
        """Every policy in the file: the base under ``None``, then the tenants by name."""
        every: dict[str | None, Policy] = {None: self.base}
        every.update(self.tenants)
        return every

    def issue(self, tenant: str | None, loc: Loc, message: str) -> PolicyIssue:
        """An issue about the value at ``loc`` in the tenant's policy (the base for ``None``),
        positioned where that value was written (no position when that is unknown)."""
        layered = self.layers.get(tenant)
        if layered is None:
            return PolicyIssue(None, None, message)
        source, line, column = locate(layered, loc)
        return PolicyIssue(line, column, message, source)


def load_policy_set(
    path: str | Path,
    *,
    signal_names: Collection[str],
    flag_names: Collection[str],
) -> PolicySet:
    """Read and validate the policy file at ``path`` with its base (``extends``) and tenants.

    ``signal_names`` and ``flag_names`` are the signals and flags the caller can measure;
    rules that reference any other name are rejected (``confidence`` is always valid).
    Thresholds given as a risk target are validated but not certified: pass the result to
    :func:`~policies.certification.certify` before deciding with it.
    Raises :class:`PolicyLoadError` if a file cannot be read or parsed, and
    :class:`PolicyValidationError` if the result is not valid, listing every problem found.
    """
    path = Path(path)
    loader = _Loader(signal_names, flag_names, path.parent)
    merged = loader.resolve(loader.read(path), str(path), path.parent, ())
    return loader.finish(merged, str(path))


def parse_policy_set(
    text: str,
    *,
    source: str = "<string>",
    base_dir: str | Path = ".",
    signal_names: Collection[str],
    flag_names: Collection[str],
) -> PolicySet:
    """Validate policy YAML given as text; ``source`` names it in error messages and a
    relative ``extends`` path is resolved against ``base_dir``."""
    loader = _Loader(signal_names, flag_names, Path(base_dir))
    return loader.finish(loader.resolve(text, source, Path(base_dir), ()), source)


def load_policy(
    path: str | Path,
    *,
    signal_names: Collection[str],
    flag_names: Collection[str],
) -> Policy:
    """The base policy of the file at ``path`` (see :func:`load_policy_set`)."""
    return load_policy_set(path, signal_names=signal_names, flag_names=flag_names).base


def parse_policy(
    text: str,
    *,
    source: str = "<string>",
    signal_names: Collection[str],
    flag_names: Collection[str],
) -> Policy:
    """The base policy of policy YAML given as text (see :func:`parse_policy_set`)."""
    return parse_policy_set(
        text, source=source, signal_names=signal_names, flag_names=flag_names
    ).base


_EXTENDS_HELP = "the name of a bundled policy or the path of a policy file (relative to this one)"


class _Loader:
    """One load: reads documents, follows ``extends``, merges tenants, collects every issue."""

    def __init__(
        self, signal_names: Collection[str], flag_names: Collection[str], folder: Path
    ) -> None:
        self.context = validation_context(signal_names, flag_names)
        self.issues: list[PolicyIssue] = []
        self.folder = folder
        """The loaded file's folder: a tenant's ``extends`` path is relative to it."""

    @staticmethod
    def read(path: Path) -> str:
        source = str(path)
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyLoadError(
                f"cannot read the policy: it is not UTF-8 text ({exc.reason} at byte {exc.start})",
                source=source,
            ) from None
        except OSError as exc:
            raise PolicyLoadError(
                f"cannot read the policy file: {exc.strerror or exc}", source=source
            ) from None

    def document(self, text: str, source: str) -> Layered:
        """One YAML document as a mapping with positions; repeated keys become issues."""
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
                "a policy must be a mapping with keys such as version, name, thresholds; "
                f"got {kind}"
            )
            raise PolicyValidationError([PolicyIssue(line, column, message)], source=source)
        version_issue = _unsupported_version(root, data)
        if version_issue is not None:
            # Keys of another version's schema would only add noise: report the version alone.
            raise PolicyValidationError([version_issue], source=source)
        self.issues.extend(issue._replace(source=source) for issue in duplicates)
        return Layered.from_document(data, root, source)

    def _issue(self, origin: Origin | None, message: str, *, key: bool = False) -> None:
        if origin is None:
            self.issues.append(PolicyIssue(None, None, message))
            return
        line, column = position(origin.key if key and origin.key else origin.value)
        self.issues.append(PolicyIssue(line, column, message, origin.source))

    def _fatal(self, origin: Origin | None, message: str, source: str) -> PolicyValidationError:
        """A problem with ``extends``: what would be merged is unknown, so report it alone."""
        self.issues = []
        self._issue(origin, message)
        return PolicyValidationError(self.issues, source=source)

    def resolve(self, text: str, source: str, folder: Path, chain: tuple[str, ...]) -> Layered:
        """The document with everything it ``extends`` merged underneath it."""
        document = self.document(text, source)
        origin = document.origin(("extends",))
        extends, _ = document.pop("extends")
        if extends is None:
            return document
        if not isinstance(extends, str) or not extends.strip():
            raise self._fatal(
                origin, f"extends must be {_EXTENDS_HELP}; got {shown(extends)}", source
            )
        if _is_path(extends):
            parent = folder / extends
            if not parent.is_file():
                raise self._fatal(origin, f"extends: no policy file {str(parent)!r}", source)
        else:
            try:
                parent = bundled_policy_path(extends)
            except PolicyNotFoundError as exc:
                raise self._fatal(origin, f"extends: {exc}", source) from None
        key = str(parent.resolve())
        here = str(Path(source).resolve()) if Path(source).exists() else source
        if key in (*chain, here):
            names = " -> ".join(Path(p).name for p in (*chain, here, key))
            message = f"extends forms a cycle: {names}; a policy cannot extend itself"
            raise self._fatal(origin, message, source)
        base = self.resolve(self.read(parent), str(parent), parent.parent, (*chain, here))
        _rebase_calibrator(base, parent.parent, folder)
        return merge(base, document)

    def finish(self, merged: Layered, source: str) -> PolicySet:
        """Validate the base policy and every tenant's merged policy; raise with all issues."""
        tenants_origin = merged.origin(("tenants",))
        raw_tenants, tenants = merged.pop("tenants")
        base = self.validate(merged, "")
        policies: dict[str, Policy] = {}
        layers: dict[str | None, Layered] = {None: merged}
        if raw_tenants is not None and tenants is None:
            self._issue(
                tenants_origin,
                "tenants must be a mapping of tenant name to the settings it overrides; "
                f"got {shown(raw_tenants)}",
            )
        elif tenants is not None:
            base_name = merged.data.get("name")
            for name in list(tenants.data):
                if not isinstance(name, str):
                    self._issue(
                        tenants.origin(()),
                        f"tenant names must be text; got {shown(name)} (quote it: '{name}')",
                    )
                    continue
                layered = self.tenant(str(name), tenants, merged, ())
                if layered is None:
                    continue
                if "name" not in tenants.data[name] and isinstance(base_name, str):
                    layered.data["name"] = f"{base_name}.{name}"
                policy = self.validate(layered, f"tenant {name!r}: ")
                if policy is not None:
                    policies[str(name)] = policy
                    layers[str(name)] = layered
        if self.issues:
            raise validation_error(self.issues, source)
        assert base is not None
        return PolicySet(base=base, tenants=policies, source=source, layers=layers)

    def tenant(
        self, name: str, tenants: Layered, base: Layered, chain: tuple[str, ...]
    ) -> Layered | None:
        """The tenant's overrides merged onto the base (or onto the tenant it extends)."""
        origin = tenants.origin((name,))
        if not _is_name(name):
            self._issue(
                origin,
                key=True,
                message=f"invalid tenant name {name!r}: use letters, digits, '-', '_' and '.', "
                "starting with a letter or digit",
            )
            return None
        overrides = tenants.data[name]
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            self._issue(
                origin,
                f"tenant {name!r} must be a mapping of the settings it overrides; "
                f"got {shown(overrides)}",
            )
            return None
        layer = tenants.child(name)
        extends_origin = layer.origin(("extends",))
        extends, _ = layer.pop("extends")
        parent = base
        if _is_path(extends):
            assert isinstance(extends, str)
            found = self.tenant_file(name, extends, extends_origin)
            if found is None:
                return None
            parent = found
        elif extends is not None:
            if not isinstance(extends, str) or extends not in tenants.data:
                valid = [str(t) for t in tenants.data if t != name]
                hint = did_you_mean(str(extends), valid) if isinstance(extends, str) else ""
                self._issue(
                    extends_origin,
                    f"tenant {name!r} extends {shown(extends)}, which is not a tenant of this "
                    f"file{hint}; tenants: {', '.join(valid) or 'none'}",
                )
                return None
            if extends == name or extends in chain:
                cycle = " -> ".join((*chain, name, extends))
                self._issue(extends_origin, f"tenant extends form a cycle: {cycle}")
                return None
            inherited = self.tenant(extends, tenants, base, (*chain, name))
            if inherited is None:
                return None
            parent = inherited
        return merge(parent, layer)

    def tenant_file(self, name: str, extends: str, origin: Origin | None) -> Layered | None:
        """The policy file a tenant extends (a path relative to the loaded file; its own
        bases merged, its calibrator path made relative to the loaded file), or ``None``
        with the problem recorded."""
        path = self.folder / extends
        if not path.is_file():
            self._issue(origin, f"tenant {name!r} extends: no policy file {str(path)!r}")
            return None
        saved = self.issues
        self.issues = []
        try:
            layered = self.resolve(self.read(path), str(path), path.parent, ())
        except (PolicyLoadError, PolicyValidationError) as exc:
            self.issues = saved + [
                issue._replace(source=issue.source or exc.source) for issue in exc.errors
            ]
            return None
        self.issues = saved + self.issues
        if "tenants" in layered.data:
            self._issue(
                origin,
                f"tenant {name!r} extends {extends!r}, which has tenants of its own; a tenant "
                "can extend a policy file without tenants (a calibrated policy, say)",
            )
            return None
        _rebase_calibrator(layered, path.parent, self.folder)
        return layered

    def validate(self, layered: Layered, prefix: str) -> Policy | None:
        """The policy, or ``None`` with its issues recorded; a tenant's issues that repeat one
        already reported (an error in the base it inherits) are left out."""
        try:
            return Policy.model_validate(layered.data, context=self.context)
        except ValidationError as exc:
            seen = set(self.issues)
            for error in exc.errors():
                issue = issue_from_error(error, layered)
                if issue not in seen:
                    self.issues.append(issue._replace(message=prefix + issue.message))
            return None


def validation_error(issues: Iterable[PolicyIssue], source: str) -> PolicyValidationError:
    """One error listing every distinct issue, the loaded file's own first, each file's in
    order of position."""
    ordered = sorted(
        dict.fromkeys(issues),
        key=lambda i: (i.source != source, i.source or "", i.line or 0, i.column or 0),
    )
    return PolicyValidationError(ordered, source=source)


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


def _is_path(value: object) -> bool:
    """Whether an ``extends`` value names a file rather than a bundled policy or a tenant."""
    return isinstance(value, str) and (value.endswith((".yaml", ".yml")) or "/" in value)


def _is_name(value: str) -> bool:
    return bool(value) and value[0] not in "-_." and set(value) <= _NAME_CHARS


def _rebase_calibrator(layered: Layered, source_dir: Path, target_dir: Path) -> None:
    """A relative calibrator path written in a base file, made relative to the extending
    file's folder (paths are resolved against the file that is finally loaded)."""
    calibration = layered.data.get("calibration")
    if not isinstance(calibration, dict):
        return
    path = calibration.get("calibrator")
    if not isinstance(path, str) or not path or Path(path).is_absolute():
        return
    rebased = os.path.relpath((source_dir / path).resolve(), target_dir.resolve())
    layered.data["calibration"] = {**calibration, "calibrator": rebased}
