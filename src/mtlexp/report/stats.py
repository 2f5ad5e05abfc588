"""Statistics over seeds: summaries with confidence intervals, gains against a baseline, paired tests.

Pure functions on numbers; what the numbers are (runs, groups, tasks) is the caller's business. A value that
cannot be computed (an interval from one seed, a change against a zero baseline) is NaN, a p-value that
cannot be computed is None, never a guess.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from mtlexp.specs import DIRECTIONS, MAX, MIN, ZERO

# The directions of the metrics mtlexp recorded before metrics.json recorded directions (record schema 1); a
# run folder's own record, when it has one, always wins.
UNRECORDED_DIRECTIONS = {"auroc": MAX, "auroc_entire": MAX, "accuracy": MAX, "r2": MAX, "mse": MIN, "mae": MIN,
                         "logloss": MIN, "norm_loss": MIN, "pcvr_bias": ZERO}



def headline_metric(metrics: Iterable[str]) -> str:
    """The metric a task is judged by, of the ones it has: auroc, else mse, else its first."""
    metrics = list(metrics)
    return "auroc" if "auroc" in metrics else "mse" if "mse" in metrics else metrics[0]


@dataclass(frozen=True)
class Summary:
    """``n`` values summarised: mean, sample sd (n - 1), and the Student-t confidence interval of the mean."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test over seeds: its two-sided p-value (None with fewer than 2 pairs) and the pairs it used."""

    p_value: float | None
    n_pairs: int


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean, sd and the ``confidence`` interval of the mean (Student t, n - 1 degrees of freedom).

    >>> s = summarize([1.0, 2.0, 3.0])
    >>> s.mean, s.sd, round(s.ci_low, 3), round(s.ci_high, 3)
    (2.0, 1.0, -0.484, 4.484)
    """
    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) == 1:  # one seed says nothing about the spread
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return Summary(len(x), mean, sd, mean - half, mean + half)


def metric_direction(metric: str, recorded: str | None = None) -> str | None:
    """The direction of ``metric``: the one its run recorded, else the one mtlexp's metric of that name has
    (``UNRECORDED_DIRECTIONS``); None when neither says (or the record is not a direction), never a guess."""
    if recorded is not None:
        return recorded if recorded in DIRECTIONS else None
    return UNRECORDED_DIRECTIONS.get(metric)


def oriented(value: Any, direction: str) -> Any:
    """``value`` (a number or an array) turned so that larger is better: as it is, negated, or ``-|value|``."""
    if direction == ZERO:
        return -abs(value)
    return value if direction == MAX else -value


def relative_change(value: float, base: float, direction: str) -> float:
    """The change (%) of ``value`` against ``base``, signed so that a gain is positive whatever the metric's
    ``direction``; for a metric best at 0 the gain is the shrinking of ``|value|``. Relative to ``|base|``, so
    a metric that can be negative (r2, a bias) keeps its sign right.

    >>> round(relative_change(0.909, 0.9, "max"), 6), round(relative_change(1.1, 1.0, "min"), 6)
    (1.0, -10.0)
    >>> round(relative_change(0.01, -0.02, "zero"), 6)
    50.0
    """
    if base == 0 or math.isnan(base):
        return math.nan
    return 100.0 * (oriented(value, direction) - oriented(base, direction)) / abs(base) + 0.0  # a tie is 0, never -0


def delta_m(means: Mapping[str, float], base: Mapping[str, float], directions: Mapping[str, str]) -> float:
    """Delta-m (%): the mean over tasks of the relative change against the baseline, signed so that a gain is
    positive whatever the metric's direction (as LibMTL reports it). ``directions``: each task's metric's."""
    return statistics.fmean(relative_change(means[t], base[t], directions[t]) for t in means)


def paired_test(values: Mapping[int, float], base: Mapping[int, float]) -> PairedTest:
    """Paired t-test of ``values`` against ``base``, both keyed by seed; only seeds in both are paired."""
    seeds = sorted(set(values) & set(base))
    return PairedTest(_p_value([values[s] - base[s] for s in seeds]), len(seeds))


def paired_delta_m_test(values: Mapping[int, Mapping[str, float]], base: Mapping[int, Mapping[str, float]],
                        directions: Mapping[str, str]) -> PairedTest:
    """Whether Delta-m differs from 0: Delta-m of each seed against the baseline's run of that seed, t-tested
    against 0. ``values`` and ``base``: per seed, each task's value; seeds lacking a task are left out."""
    seeds = sorted(s for s in set(values) & set(base) if all(t in values[s] and t in base[s] for t in directions))
    per_seed = [delta_m({t: values[s][t] for t in directions}, base[s], directions) for s in seeds]
    return PairedTest(_p_value(per_seed), len(seeds))


def _p_value(differences: list[float]) -> float | None:
    """Two-sided p-value of a one-sample t-test of ``differences`` against 0 (for paired differences, the same
    test as ``scipy.stats.ttest_rel``)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or np.isnan(d).any():
        return None
    # Identical differences have no spread: t is infinite (p = 0), or undefined when they are all 0 (nothing
    # differs, p = 1). scipy would warn about the precision loss and answer NaN for the latter.
    if np.allclose(d, d[0], rtol=1e-12, atol=0.0):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)
