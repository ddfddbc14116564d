"""Errors raised by the guardrail package.

Hierarchy::

    GuardrailError                 root: catch this to handle any guardrail failure
    ├── ConfigError                a setting or a file named by a setting is wrong
    ├── QuestionError              the question is empty, too long or not text
    ├── ModelUnavailableError      a model package is missing or its file fails verification
    └── BackendError               a generator backend failed while running

User errors carry a message that says what was received, what is valid and what to do next;
the CLI prints it on one line and exits non-zero. Errors from the leaf packages
(``retrievers.RetrieverError``, ``policies.PolicyError``) pass through unchanged.
"""

from __future__ import annotations


class GuardrailError(Exception):
    """Root of every error raised by the guardrail package."""


class ConfigError(GuardrailError):
    """A configuration value, or a file it names, is invalid."""


class QuestionError(GuardrailError):
    """The question cannot be asked as given."""


class ModelUnavailableError(GuardrailError):
    """A model cannot be prepared: its package is missing or its file is corrupt."""


class BackendError(GuardrailError):
    """A generator backend failed while generating or scoring."""
