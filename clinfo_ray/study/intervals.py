"""Interval math in plain Python (no scipy): Student's t, seed-paired differences with their
intervals, a slope per seed, Pearson correlations with Fisher-z intervals and a two-predictor
least-squares fit. The claims' rules (which seeds, which candidate, which verdict) are in
:mod:`clinfo_ray.study.claims`; this module only computes.

Choices, each stated once here:

* the sample sd uses n - 1; for one value it is ``None`` (undefined, never 0 or NaN);
* a 95% interval over n paired values is mean ± t(0.975, n-1)·sd/√n;
* an interval "supports" an effect when it lies wholly on the expected side of 0, "does not
  support" it when wholly on the other side, else it is "inconclusive at this budget".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive at this budget"
NOT_EVALUATED = "not evaluated"
CONFIDENCE = 0.95

_CF_MAX_STEPS = 20_000
_CF_TOLERANCE = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz
    method; it converges fast for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _CF_MAX_STEPS + 1):
        # the even term, then the odd term of the fraction
        for coefficient in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + coefficient * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + coefficient / c
            c = c if abs(c) > _TINY else _TINY
            step = c * d
            result *= step
        if abs(step - 1.0) < _CF_TOLERANCE:
            return result
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"incomplete beta needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    # I_x(a, b) = 1 - I_{1-x}(b, a): the fraction converges on that side
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (math.inf: the normal).
    Accurate to about 1e-12 up to 10^4 degrees of freedom; the error grows with lgamma(df/2)
    beyond (about 1e-9 at 10^6), and above 10^7 the normal CDF is returned (off by < 1e-7)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if df > 1e7:
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


# Above this many degrees of freedom lgamma(df/2) is so large that the beta function's prefactor
# loses digits; the quantile's expansion in 1/df is then exact to float precision.
_LARGE_DF = 1e4


def _cornish_fisher(z: float, df: float) -> float:
    """t's quantile from the normal's z, four terms in 1/df (Abramowitz & Stegun 26.7.5)."""
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (i + 1) for i, term in enumerate(terms))


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p: bisection on the CDF to float precision below 10^4 degrees of
    freedom, the Cornish-Fisher expansion above (error < 1e-15), the normal's quantile for
    df=math.inf."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    if df >= _LARGE_DF and not math.isinf(df):
        return _cornish_fisher(student_t_quantile(p, math.inf), df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    while high - low > 1e-13 * high:
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def mean_sd(values: Iterable[float]) -> tuple[float, float | None]:
    """(mean, sample sd with n - 1); the sd is None for a single value."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_sd of no values")
    mean = math.fsum(data) / len(data)
    if len(data) == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (len(data) - 1))


@dataclass(frozen=True)
class PairedDifference:
    """a - b seed by seed: mean, sd (n - 1), n, the 95% t-interval and the seeds it used;
    ``dropped``: seeds only one side had."""

    mean: float
    sd: float
    n: int
    low: float
    high: float
    seeds: tuple[int, ...]
    dropped: tuple[int, ...] = ()

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high


def paired_difference(
    a_by_seed: Mapping[int, float], b_by_seed: Mapping[int, float]
) -> PairedDifference:
    """a - b on the seeds both have; ValueError naming the seeds each side lacks when fewer
    than 2 are shared (an interval needs 2)."""
    seeds = sorted(a_by_seed.keys() & b_by_seed.keys())
    only_a = sorted(a_by_seed.keys() - b_by_seed.keys())
    only_b = sorted(b_by_seed.keys() - a_by_seed.keys())
    if len(seeds) < 2:
        gaps = [f"seeds missing from the second: {only_a}"] if only_a else []
        gaps += [f"seeds missing from the first: {only_b}"] if only_b else []
        raise ValueError(
            "; ".join([f"a paired difference needs 2 seeds both sides have, got {seeds}", *gaps])
        )
    mean, sd = mean_sd(a_by_seed[s] - b_by_seed[s] for s in seeds)
    assert sd is not None
    half = student_t_quantile(0.5 + CONFIDENCE / 2, len(seeds) - 1) * sd / math.sqrt(len(seeds))
    return PairedDifference(
        mean, sd, len(seeds), mean - half, mean + half, tuple(seeds), tuple(only_a + only_b)
    )


def verdict(interval: tuple[float, float]) -> str:
    """SUPPORTED when the interval lies above 0, NOT_SUPPORTED when below, else INCONCLUSIVE."""
    low, high = interval
    if low > 0:
        return SUPPORTED
    if high < 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE


@dataclass(frozen=True)
class Correlation:
    """Pearson r over n points with its 95% Fisher-z interval (None below 4 points)."""

    r: float
    n: int
    low: float | None
    high: float | None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.low is None or self.high is None:
            return None
        return self.low, self.high


def correlation(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Pearson r of paired values (at least 3, neither constant). The interval is
    tanh(atanh(r) ± z(0.975)/√(n - 3)); with |r| = 1 it is [r, r]."""
    if len(x) != len(y):
        raise ValueError(f"correlation of {len(x)} x values against {len(y)} y values")
    if len(x) < 3:
        raise ValueError(f"a correlation needs at least 3 points, got {len(x)}")
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        raise ValueError("a correlation with a constant variable is undefined")
    r = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
    if len(x) < 4:
        return Correlation(r, len(x), None, None)
    if abs(r) == 1.0:
        return Correlation(r, len(x), r, r)
    half = student_t_quantile(0.5 + CONFIDENCE / 2, math.inf) / math.sqrt(len(x) - 3)
    z = math.atanh(r)
    return Correlation(r, len(x), math.tanh(z - half), math.tanh(z + half))


@dataclass(frozen=True)
class JointFit:
    """Least squares of y on two predictors at once: each slope holds the other predictor
    fixed, with its Student-t 95% interval on n - 3 degrees of freedom; ``r_predictors`` is
    the predictors' own correlation (near ±1: the two effects cannot be told apart)."""

    slopes: tuple[float, float]
    intervals: tuple[tuple[float, float], tuple[float, float]]
    n: int
    r_predictors: float


def joint_fit(x1: Sequence[float], x2: Sequence[float], y: Sequence[float]) -> JointFit:
    """y ≈ a + b1·x1 + b2·x2 (at least 4 points; ValueError when x1 and x2 are collinear)."""
    n = len(y)
    if not len(x1) == len(x2) == n:
        raise ValueError(f"a joint fit of {len(x1)}, {len(x2)} predictor values, {n} responses")
    if n < 4:
        raise ValueError(f"a fit on two predictors needs at least 4 points, got {n}")
    columns = [[v - math.fsum(c) / n for v in c] for c in (x1, x2, y)]

    def dot(a: list[float], b: list[float]) -> float:
        return math.fsum(p * q for p, q in zip(a, b, strict=True))

    s11, s12, s22 = (
        dot(columns[0], columns[0]),
        dot(columns[0], columns[1]),
        dot(columns[1], columns[1]),
    )
    s1y, s2y, syy = (
        dot(columns[0], columns[2]),
        dot(columns[1], columns[2]),
        dot(columns[2], columns[2]),
    )
    det = s11 * s22 - s12 * s12
    if s11 == 0 or s22 == 0 or det <= 1e-12 * s11 * s22:
        raise ValueError("the two predictors are collinear (or one is constant): no joint fit")
    b1 = (s22 * s1y - s12 * s2y) / det
    b2 = (s11 * s2y - s12 * s1y) / det
    residual = max(0.0, syy - b1 * s1y - b2 * s2y)
    scale = residual / (n - 3)
    t = student_t_quantile(0.5 + CONFIDENCE / 2, n - 3)
    half1, half2 = t * math.sqrt(scale * s22 / det), t * math.sqrt(scale * s11 / det)
    return JointFit(
        (b1, b2),
        ((b1 - half1, b1 + half1), (b2 - half2, b2 + half2)),
        n,
        s12 / math.sqrt(s11 * s22),
    )


def directed_verdict(interval: tuple[float, float] | None, sign: int) -> str:
    """The verdict for an effect the paper expects with ``sign`` (+1 or -1); no interval (too
    few points) is inconclusive."""
    if interval is None:
        return INCONCLUSIVE
    low, high = interval
    return verdict((low, high) if sign > 0 else (-high, -low))


def least_squares_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The slope of the least-squares line of y on x (at least 2 points, x not constant)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"a slope needs at least 2 paired points, got {len(x)} and {len(y)}")
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxx = math.fsum((a - mx) ** 2 for a in x)
    if sxx == 0:
        raise ValueError("a slope against a constant variable is undefined")
    return math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
