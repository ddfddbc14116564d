"""Risk control: the answer threshold that keeps the error among answered questions below a
target, with a stated probability, chosen on a calibration split.

The guarantee (Learn then Test; Angelopoulos, Bates, Candès, Jordan and Lei, 2021): for a
target error ``alpha`` and failure probability ``delta``, the chosen threshold ``t`` satisfies

    P( error rate among answered questions at t  <=  alpha )  >=  1 - delta

over the draw of the calibration split, for new questions exchangeable with it. Each candidate
threshold ``t`` is a null hypothesis "the error at t exceeds alpha", tested with a valid
p-value from the ``k`` errors among the ``n`` calibration questions answered at ``t``:

- ``binomial``: the exact binomial tail ``P(Binom(n, alpha) <= k)``;
- ``hoeffding-bentkus``: ``min(exp(-n h(k/n, alpha)), e P(Binom(n, alpha) <= k))``
  (Bates, Angelopoulos, Lei, Malik and Jordan, 2021).

The candidates are tested in a fixed sequence from the most to the least conservative
(fixed-sequence testing controls the family-wise error at ``delta``) and testing stops at the
first threshold that fails; the lowest threshold that passed is returned, which maximises
coverage. A sequence that opened at the very top would stop at once (a handful of answered
questions can never pass), so it opens at the first threshold answering at least
``start_answered(alpha, delta)`` calibration questions: the fewest at which an observed
error of ``alpha / 2`` would pass, and never fewer than 20. That starting point depends on
the scores only, never on the labels, so the guarantee is kept. When no threshold passes,
the result is infeasible and the policy must defer everything rather than pretend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

Method = Literal["binomial", "hoeffding-bentkus"]
METHODS: tuple[str, ...] = ("binomial", "hoeffding-bentkus")


def _binom_cdf(k: int, n: int, p: float) -> float:
    """``P(Binom(n, p) <= k)``, summed in log space (exact for the sizes used here)."""
    if k >= n:
        return 1.0
    if k < 0:
        return 0.0
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + (i * math.log(p) if i else 0.0)
        + ((n - i) * math.log1p(-p) if n - i else 0.0)
        for i in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate after ``k`` events in ``n`` trials:
    ``(lower, upper)``, each side missing the true rate with probability at most
    ``(1 - confidence) / 2``; ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n={n}, got {k}")
    tail = (1 - confidence) / 2

    def solve(f: Callable[[float], float]) -> float:
        """The p in [0, 1] where the decreasing ``f(p)`` crosses ``tail`` (bisection)."""
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if f(mid) > tail:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # Upper: P(Binom(n, p) <= k) = tail; lower: P(Binom(n, p) >= k) = tail.
    upper = 1.0 if k == n else solve(lambda p: _binom_cdf(k, n, p))
    lower = 0.0 if k == 0 else 1.0 - solve(lambda q: _binom_cdf(n - k, n, q))
    return lower, upper


def binomial_pvalue(errors: int, n: int, alpha: float) -> float:
    """p-value of "error rate > alpha" after ``errors`` errors in ``n`` answered."""
    return _binom_cdf(errors, n, alpha) if n else 1.0


def _kl_bernoulli(a: float, b: float) -> float:
    def term(x: float, y: float) -> float:
        return 0.0 if x == 0 else x * math.log(x / y)

    return term(a, b) + term(1 - a, 1 - b)


def hoeffding_bentkus_pvalue(errors: int, n: int, alpha: float) -> float:
    """The Hoeffding-Bentkus p-value of "error rate > alpha"."""
    if n == 0:
        return 1.0
    rate = errors / n
    hoeffding = math.exp(-n * _kl_bernoulli(min(rate, alpha), alpha))
    bentkus = math.e * _binom_cdf(math.ceil(n * rate), n, alpha)
    return min(1.0, hoeffding, bentkus)


PVALUES = {"binomial": binomial_pvalue, "hoeffding-bentkus": hoeffding_bentkus_pvalue}


@dataclass(frozen=True)
class RiskControl:
    """The outcome of choosing a threshold for one target."""

    target_error: float
    delta: float
    method: str
    feasible: bool
    threshold: float | None
    n_calibration: int
    answered: int
    errors: int
    coverage: float
    tested: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def min_answered(alpha: float, delta: float) -> int:
    """The fewest answered questions at which zero errors can pass the test."""
    return math.ceil(math.log(delta) / math.log1p(-alpha))


MIN_START = 20
"""The sequence never opens on fewer answered questions than this: at the very top of the
ranking a few unlucky errors would end it at once."""


def start_answered(alpha: float, delta: float, method: str = "binomial") -> int:
    """Where the fixed sequence opens: the fewest answered questions at which an error
    rate of ``alpha / 2`` passes the test, and at least ``MIN_START``."""
    pvalue = PVALUES[method]
    n = max(min_answered(alpha, delta), MIN_START)
    while pvalue(math.floor(n * alpha / 2), n, alpha) > delta:
        n += 1
    return n


def control_risk(
    scores: ArrayLike,
    correct: ArrayLike,
    *,
    target_error: float,
    delta: float,
    method: str = "binomial",
    eligible: ArrayLike | None = None,
) -> RiskControl:
    """The lowest threshold whose error among answered is certified below ``target_error``.

    ``scores`` are calibrated confidences, ``correct`` whether each answer is right, and
    ``eligible`` which items can be answered at all (not the model's own abstentions);
    an item is answered at threshold ``t`` when it is eligible and its score is ``>= t``.
    """
    if not 0 < target_error < 1:
        raise ValueError(f"target_error must be in (0, 1), got {target_error}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if method not in PVALUES:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    s = np.asarray(scores, dtype=float)
    y = np.asarray(correct, dtype=bool)
    ok = np.ones(len(s), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    n_total = len(s)
    pvalue = PVALUES[method]
    candidates = np.unique(s[ok])[::-1]  # most conservative first
    eligible_count = int(ok.sum())
    need = min(start_answered(target_error, delta, method), eligible_count)
    need = max(need, min_answered(target_error, delta))
    best: tuple[float, int, int] | None = None
    tested = 0
    for t in candidates:
        answered = ok & (s >= t)
        n = int(answered.sum())
        if n < need:
            continue  # the sequence opens at a score-only starting point
        errors = int((answered & ~y).sum())
        tested += 1
        if pvalue(errors, n, target_error) > delta:
            break
        best = (float(t), n, errors)
    if best is None:
        threshold, n, errors = None, 0, 0
        message = (
            f"no threshold keeps the error among answered questions below "
            f"{target_error:.0%} with probability {1 - delta:.0%} on these "
            f"{n_total} calibration questions: defer everything, or relax the target"
        )
    else:
        threshold, n, errors = best
        message = (
            f"answer when confidence >= {threshold:.4f}: {n} of {n_total} calibration "
            f"questions answered ({n / n_total:.0%}), {errors} wrong ({errors / n:.1%}); error "
            f"<= {target_error:.0%} certified with probability {1 - delta:.0%} ({method})"
        )
    return RiskControl(
        target_error=target_error,
        delta=delta,
        method=method,
        feasible=threshold is not None,
        threshold=threshold,
        n_calibration=n_total,
        answered=n,
        errors=errors,
        coverage=n / n_total if n_total else 0.0,
        tested=tested,
        message=message,
    )


def realised(
    scores: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    threshold: float | None,
    eligible: Sequence[bool] | np.ndarray | None = None,
) -> tuple[float, float, int]:
    """Coverage, error among answered, and answered count at ``threshold`` (None: none)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(correct, dtype=bool)
    ok = np.ones(len(s), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if threshold is None:
        return 0.0, 0.0, 0
    answered = ok & (s >= threshold)
    n = int(answered.sum())
    error = float((answered & ~y).sum() / n) if n else 0.0
    return n / len(s), error, n
