"""Error bars for the evaluations: how far a number measured on a few dozen generations can be trusted.

- `wilson_interval(k, n)`: the Wilson score interval of a proportion k / n (stays inside [0, 1] and is
  sensible at k = 0 or k = n and for small n, where the normal approximation is not);
- `binomial_p_above(k, n, p)`: the exact one-sided binomial p-value P(X >= k) for X ~ Binomial(n, p):
  how likely a model matching with probability `p` (chance) scores k or more of n;
- `bootstrap_interval(values, statistic)`: the percentile bootstrap interval of a statistic (a median,
  a 90th percentile) over `values`, resampled with replacement from a fixed seed, so a report is
  reproducible.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _check_counts(k: int, n: int) -> None:
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer))) or n < 1 or not 0 <= k <= n:
        raise ValueError(f"need whole counts 0 <= k <= n with n >= 1, got k={k!r}, n={n!r}")


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the two-sided Wilson score interval for k successes in n trials."""
    from scipy.stats import norm

    _check_counts(k, n)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def binomial_p_above(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact: the one-sided p-value of k matches against chance p."""
    from scipy.stats import binom

    _check_counts(k, n)
    if not 0 < p < 1:
        raise ValueError(f"chance p must be in (0, 1), got {p!r}")
    return float(binom.sf(k - 1, n, p))


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray],
                       confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """(low, high) percentile bootstrap interval of `statistic(sample, axis=-1)` over `values`."""
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D list of values, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    stats = statistic(x[rng.integers(0, x.size, (resamples, x.size))], axis=-1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def describe() -> dict:
    """The methods, for the report (words only: no number here is a measurement)."""
    return {"confidence": f"{CONFIDENCE:.0%}",
            "timing": f"percentile bootstrap over generations, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
            "adherence_interval": "Wilson score interval",
            "adherence_p_value": "exact one-sided binomial P(matches >= k) at chance = 1 / number of values"}
