"""Errors raised while finding, reading, validating, certifying and applying policies.

Hierarchy::

    PolicyError                    root: catch this to handle any policy problem
    ├── PolicyLoadError            the text could not be read or parsed (I/O, encoding, YAML syntax)
    │   └── PolicyNotFoundError    no bundled policy has the requested name
    ├── PolicyValidationError      the YAML parsed but is not a valid policy (schema, names), or
    │                              its risk target could not be certified
    └── PolicyNotCertifiedError    a decision was asked of a policy whose risk target is not
                                   certified yet

Every error carries a list of :class:`PolicyIssue` (line, column, message); ``str()`` gives one
issue per line in the form linters print (``FILE:LINE:COLUMN: message``), which editors and
terminals turn into links, for example::

    policy.yaml:12:13: unknown action 'refuse'; valid actions: answer, hedge, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import NamedTuple


def did_you_mean(word: str, valid: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid word, or ``""`` when none is close."""
    matches = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


class PolicyIssue(NamedTuple):
    """One problem in a policy: 1-based line and column (``None`` when unknown), a message,
    and the file it is in when that is not the file being loaded (a base it ``extends``)."""

    line: int | None
    column: int | None
    message: str
    source: str | None = None

    def format(self, source: str | None) -> str:
        """Render as ``"FILE:LINE:COLUMN: message"``; ``"FILE:LINE: message"`` without a
        column, ``"FILE: message"`` without a line, the bare message without a file."""
        # One line per issue, whatever the message holds.
        message = " ".join(line.strip() for line in self.message.splitlines() if line.strip())
        where = self.source or source
        if not where:
            return message
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {message}"


class PolicyError(Exception):
    """Root of all policy errors; ``errors`` lists every problem found, not only the first."""

    def __init__(self, errors: str | Iterable[PolicyIssue], *, source: str | None = None) -> None:
        if isinstance(errors, str):
            errors = [PolicyIssue(None, None, errors)]
        self.errors: list[PolicyIssue] = list(errors)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(issue.format(self.source) for issue in self.errors)


class PolicyLoadError(PolicyError):
    """The policy text could not be read or is not well-formed YAML."""


class PolicyNotFoundError(PolicyLoadError):
    """No bundled policy has the requested name."""


class PolicyValidationError(PolicyError):
    """The YAML is well-formed but does not describe a valid policy (or its risk target
    could not be certified)."""


class PolicyNotCertifiedError(PolicyError):
    """The policy's thresholds are a risk target that was never certified: certify the
    policies after loading them (:func:`policies.certification.certify`)."""
