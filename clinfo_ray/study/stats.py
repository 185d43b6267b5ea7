"""The study's statistics, in plain Python (no scipy): seed-paired differences with Student-t
intervals, a choice among candidates made on validation only, the gap closure, and Pearson
correlations with Fisher-z intervals.

Choices, each stated once here:

* the unit of replication is the seed: two methods are compared on the seeds both have, one
  difference per seed, and the 95% interval is mean ± t(0.975, n-1)·sd/√n;
* the sample sd uses n - 1; for one value it is ``None`` (undefined, never 0 or NaN);
* a claim is "supported" when its interval lies wholly on the paper's side of 0, "not
  supported" when wholly on the other side, else "inconclusive at this budget";
* when a claim names several candidates for the better side, the one with the highest mean
  *validation* metric stands for it; the test split is never looked at to choose;
* the correlation claim is tested over method means (one point a method), r with a Fisher-z
  interval, which needs at least 4 methods.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from clinfo_ray.study.records import ClaimSpec, TrialRecord

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


def values_by_seed(
    records: Iterable[TrialRecord], method: str, split: str, metric: str
) -> dict[int, float]:
    """seed -> ``split`` ("val" or "test") ``metric`` of ``method``'s records. ValueError when
    the method has no record, a seed appears twice, or a record lacks the split or metric."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    found: dict[int, float] = {}
    for record in records:
        if record.method != method:
            continue
        scores = record.val if split == "val" else record.test
        if scores is None or metric not in scores:
            raise ValueError(f"{method} seed {record.seed}: no {split} {metric}")
        if record.seed in found:
            raise ValueError(f"{method}: seed {record.seed} recorded twice")
        found[record.seed] = scores[metric]
    if not found:
        raise ValueError(f"no records of method {method!r}")
    return found


def choose_on_validation(
    records: Sequence[TrialRecord], candidates: Sequence[str], metric: str
) -> str:
    """The candidate with the highest mean over seeds of val[metric] (a tie: the first
    listed). The test split is never read."""
    means = validation_means(records, candidates, metric)
    return max(candidates, key=lambda c: (means[c], -candidates.index(c)))


def validation_means(
    records: Sequence[TrialRecord], candidates: Sequence[str], metric: str
) -> dict[str, float]:
    return {c: mean_sd(values_by_seed(records, c, "val", metric).values())[0] for c in candidates}


def gap_closure(better: float, worse: float, reference: float) -> float | None:
    """(better - worse) / (reference - worse): the share of the reference's lead that the
    better method recovers. None when the reference does not beat the worse method."""
    if reference - worse <= 0:
        return None
    return (better - worse) / (reference - worse)


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


@dataclass(frozen=True)
class ClaimResult:
    """A claim's outcome. paired: ``chosen`` (the candidate val chose, by ``val_means``),
    ``difference`` chosen - worse on the test metric and ``knn_difference`` on test kNN top-1,
    ``test_means`` of the methods compared, ``reference_lead`` reference - worse seed by seed
    (None: no reference, or fewer than 2 seeds shared),
    ``gap`` the gap closure (None: no reference, or its lead over worse is not supported by its
    own interval: a ratio over a lead within the seeds' noise means nothing). correlation: r of
    the methods' mean test metric with their mean I(Z;T) and H(Z|T), one verdict each, and
    ``points`` (method, mean I, mean H, mean metric).
    ``error``: why the claim could not be evaluated (verdict NOT_EVALUATED)."""

    spec: ClaimSpec
    verdict: str
    chosen: str = ""
    val_means: dict[str, float] = field(default_factory=dict)
    test_means: dict[str, float] = field(default_factory=dict)
    difference: PairedDifference | None = None
    knn_difference: PairedDifference | None = None
    reference_lead: PairedDifference | None = None
    gap: float | None = None
    mutual_information: Correlation | None = None
    conditional_entropy: Correlation | None = None
    mutual_information_verdict: str = ""
    conditional_entropy_verdict: str = ""
    points: tuple[tuple[str, float, float, float], ...] = ()
    joint: JointFit | None = None
    error: str = ""


def evaluate_claims(
    records: Sequence[TrialRecord], claims: Sequence[ClaimSpec], metric: str
) -> list[ClaimResult]:
    """One result a claim, in order. A claim the records cannot answer (a method or seed
    missing, too few points) gets NOT_EVALUATED and the reason, and the others go on."""
    results = []
    for claim in claims:
        try:
            if claim.kind == "paired":
                results.append(_paired_claim(records, claim, metric))
            else:
                results.append(_correlation_claim(records, claim, metric))
        except ValueError as error:
            results.append(ClaimResult(claim, NOT_EVALUATED, error=str(error)))
    return results


def _paired_claim(records: Sequence[TrialRecord], claim: ClaimSpec, metric: str) -> ClaimResult:
    val_means = validation_means(records, claim.better, metric)
    chosen = choose_on_validation(records, claim.better, metric)
    chosen_test = values_by_seed(records, chosen, "test", metric)
    worse_test = values_by_seed(records, claim.worse, "test", metric)
    difference = paired_difference(chosen_test, worse_test)
    try:
        knn = paired_difference(
            values_by_seed(records, chosen, "test", "knn_top1"),
            values_by_seed(records, claim.worse, "test", "knn_top1"),
        )
    except ValueError:
        knn = None  # shown beside the claim, never decides it
    seeds = set(difference.seeds)
    by_method = {chosen: chosen_test, claim.worse: worse_test}
    if claim.reference:
        by_method[claim.reference] = values_by_seed(records, claim.reference, "test", metric)
        seeds &= by_method[claim.reference].keys()
        if not seeds:
            raise ValueError(f"claim {claim.id}: no seed has all of {sorted(by_method)}")
    # the means on the seeds every compared method has, so the gap closure compares like with like
    test_means = {m: mean_sd(v[s] for s in sorted(seeds))[0] for m, v in by_method.items()}
    gap = lead = None
    if claim.reference:
        try:
            lead = paired_difference(by_method[claim.reference], worse_test)
        except ValueError:
            lead = None  # fewer than 2 seeds shared: no interval, so no gap closure either
        if lead is not None and verdict(lead.interval) == SUPPORTED:
            gap = gap_closure(
                test_means[chosen], test_means[claim.worse], test_means[claim.reference]
            )
    return ClaimResult(
        claim,
        verdict(difference.interval),
        chosen=chosen,
        val_means=val_means,
        test_means=test_means,
        difference=difference,
        knn_difference=knn,
        reference_lead=lead,
        gap=gap,
    )


def _correlation_claim(
    records: Sequence[TrialRecord], claim: ClaimSpec, metric: str
) -> ClaimResult:
    points = []
    for method in claim.methods:
        mine = [r for r in records if r.method == method]
        accuracy = mean_sd(values_by_seed(records, method, "test", metric).values())[0]
        keys = ("mutual_information_bits", "conditional_entropy_bits")
        without = sorted(
            r.seed for r in mine if r.clusters is None or not set(keys) <= r.clusters.keys()
        )
        if without:
            raise ValueError(f"{method}: no cluster statistics for seeds {without}")
        information, leftover = (
            mean_sd(r.clusters[key] for r in mine if r.clusters is not None)[0] for key in keys
        )
        points.append((method, information, leftover, accuracy))
    accuracies = [p[3] for p in points]
    mi = correlation([p[1] for p in points], accuracies)
    ce = correlation([p[2] for p in points], accuracies)
    mi_verdict = directed_verdict(mi.interval, +1)
    ce_verdict = directed_verdict(ce.interval, -1)
    if NOT_SUPPORTED in (mi_verdict, ce_verdict):
        overall = NOT_SUPPORTED
    elif mi_verdict == ce_verdict == SUPPORTED:
        overall = SUPPORTED
    else:
        overall = INCONCLUSIVE
    try:  # shown beside the correlations, never decides the claim (its verdict is theirs)
        joint = joint_fit([p[1] for p in points], [p[2] for p in points], accuracies)
    except ValueError:
        joint = None
    return ClaimResult(
        claim,
        overall,
        joint=joint,
        mutual_information=mi,
        conditional_entropy=ce,
        mutual_information_verdict=mi_verdict,
        conditional_entropy_verdict=ce_verdict,
        points=tuple(points),
    )
