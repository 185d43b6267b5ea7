"""The study's interval math against hand-computed cases and closed forms (no scipy to compare to).

Student's t is checked against its closed-form quantiles (df 1, 2, 4), its closed-form CDF for
integer degrees of freedom (Abramowitz & Stegun 26.7.3-4), and printed tables.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from clinfo_ray.study.intervals import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    correlation,
    directed_verdict,
    joint_fit,
    least_squares_slope,
    mean_sd,
    paired_difference,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_quantile,
    verdict,
)

Z975 = 1.959963984540054  # the standard normal's 0.975 quantile


def t_cdf_closed_form(t: float, df: int) -> float:
    """P(T <= t) from the finite series of A&S 26.7.3 (odd df) and 26.7.4 (even df)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0
        for k in range(2, df, 2):
            term *= (k - 1) / k * c2
            total += term
        a = s * total
    else:
        term = total = math.cos(theta) if df > 1 else 0.0
        for k in range(3, df - 1, 2):
            term *= (k - 1) / k * c2
            total += term
        a = 2 / math.pi * (theta + s * total)
    return (1 + a) / 2


def t_quantile_closed_form(p: float, df: int) -> float:
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    assert df == 4 and p > 0.5
    q = 4 * p * (1 - p)
    return 2 * math.sqrt(math.cos(math.acos(math.sqrt(q)) / 3) / math.sqrt(q) - 1)


@pytest.mark.parametrize(
    ("df", "table"),
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (10**6, 1.9600)],
)
def test_t_quantile_matches_the_printed_table(df: int, table: float) -> None:
    assert student_t_quantile(0.975, df) == pytest.approx(table, abs=5e-5)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_the_closed_forms(df: int, p: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(t_quantile_closed_form(p, df), abs=1e-9)
    assert student_t_quantile(1 - p, df) == pytest.approx(-t_quantile_closed_form(p, df), abs=1e-9)


@pytest.mark.parametrize("df", [3, 9, 29])
def test_t_quantile_inverts_the_closed_form_cdf(df: int) -> None:
    for p in (0.75, 0.95, 0.975, 0.999):
        assert t_cdf_closed_form(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


def test_t_quantile_for_large_df_tends_to_the_normal() -> None:
    assert student_t_quantile(0.975, math.inf) == pytest.approx(Z975, abs=1e-12)
    # t(0.975, ν) = z + (z³ + z)/(4ν) + O(ν⁻²)
    for df in (1e5, 1e6, 1e9):
        first_order = Z975 + (Z975**3 + Z975) / (4 * df)
        assert student_t_quantile(0.975, df) == pytest.approx(first_order, abs=1e-9)
    # the expansion used above 10^4 meets the bisection used below it
    assert student_t_quantile(0.975, 1e4) == pytest.approx(
        student_t_quantile(0.975, 9999.999), abs=1e-9
    )


def test_t_quantile_edges() -> None:
    assert student_t_quantile(0.5, 7) == 0.0
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="0 < p < 1"):
            student_t_quantile(bad, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_cdf(1.0, 0)


@pytest.mark.parametrize("df", range(1, 11))
def test_t_cdf_matches_the_closed_form(df: int) -> None:
    for t in (-4.0, -1.0, 0.0, 0.3, 1.0, 2.26, 7.5):
        assert student_t_cdf(t, df) == pytest.approx(t_cdf_closed_form(t, df), abs=1e-13)


def test_incomplete_beta_closed_forms() -> None:
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert regularized_incomplete_beta(3, 1, x) == pytest.approx(x**3, abs=1e-14)
        assert regularized_incomplete_beta(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5)
    assert regularized_incomplete_beta(7.5, 7.5, 0.5) == pytest.approx(0.5, abs=1e-14)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0, 1, 0.5)


def test_mean_sd() -> None:
    mean, sd = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and sd == pytest.approx(math.sqrt(5 / 3))  # ddof = 1
    assert mean_sd([0.7]) == (0.7, None)
    with pytest.raises(ValueError):
        mean_sd([])


def test_paired_difference_by_hand() -> None:
    a = {0: 0.60, 1: 0.61, 2: 0.65, 7: 0.9}  # seed 7: only a has it, left out
    b = {0: 0.50, 1: 0.52, 2: 0.54}
    d = paired_difference(a, b)  # differences 0.10, 0.09, 0.11
    half = 4.302652729749464 * 0.01 / math.sqrt(3)
    assert d.n == 3 and d.seeds == (0, 1, 2) and d.dropped == (7,)
    assert d.mean == pytest.approx(0.10) and d.sd == pytest.approx(0.01)
    assert d.interval == pytest.approx((0.10 - half, 0.10 + half))
    assert verdict(d.interval) == SUPPORTED
    # swapped: the same interval mirrored, the paper's direction contradicted
    assert verdict(paired_difference(b, a).interval) == NOT_SUPPORTED


def test_paired_interval_straddling_zero_is_inconclusive() -> None:
    d = paired_difference({1: 0.53, 2: 0.47, 3: 0.53}, {1: 0.50, 2: 0.50, 3: 0.50})
    # differences +0.03, -0.03, +0.03: mean 0.01, sd √0.0012, half 4.3027·√0.0012/√3 = 4.3027·0.02
    assert d.mean == pytest.approx(0.01) and d.sd == pytest.approx(math.sqrt(0.0012))
    assert d.low == pytest.approx(0.01 - 4.302652729749464 * 0.02)
    assert d.high == pytest.approx(0.01 + 4.302652729749464 * 0.02)
    assert verdict(d.interval) == INCONCLUSIVE


def test_paired_difference_names_the_missing_seeds() -> None:
    with pytest.raises(ValueError, match=r"missing from the second: \[0\].*first: \[2, 3\]"):
        paired_difference({0: 0.5, 1: 0.6}, {1: 0.4, 2: 0.4, 3: 0.4})
    with pytest.raises(ValueError, match=r"both sides have, got \[0\]$"):
        paired_difference({0: 0.5}, {0: 0.4})  # one seed, none missing: nothing more to say


def test_verdict_boundaries() -> None:
    assert verdict((0.001, 0.2)) == SUPPORTED
    assert verdict((-0.2, -0.001)) == NOT_SUPPORTED
    assert verdict((0.0, 0.2)) == INCONCLUSIVE  # touching 0 is not excluding it
    assert verdict((-0.2, 0.0)) == INCONCLUSIVE
    assert directed_verdict((-0.9, -0.2), -1) == SUPPORTED
    assert directed_verdict((-0.9, -0.2), +1) == NOT_SUPPORTED
    assert directed_verdict(None, +1) == INCONCLUSIVE


def test_correlation_by_hand() -> None:
    # dx = (-1.5, -0.5, 0.5, 1.5), dy = (-3, -1, 0, 4): Sxy = 11, Sxx = 5, Syy = 26
    c = correlation([1, 2, 3, 4], [2, 4, 5, 9])
    r = 11 / math.sqrt(5 * 26)
    assert c.r == pytest.approx(r) and c.n == 4
    # Fisher z: tanh(atanh(r) ± 1.96/√(n-3)), n - 3 = 1
    assert c.interval == pytest.approx(
        (math.tanh(math.atanh(r) - Z975), math.tanh(math.atanh(r) + Z975))
    )
    assert correlation([1, 2, 3], [3, 1, 2]).interval is None  # 3 points: r = -0.5, no interval
    assert correlation([1, 2, 3], [3, 1, 2]).r == pytest.approx(-0.5)
    assert correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]).interval == (1.0, 1.0)
    with pytest.raises(ValueError, match="constant"):
        correlation([1, 2, 3, 4], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="at least 3"):
        correlation([1, 2], [1, 2])


def test_least_squares_slope_by_hand() -> None:
    # dx = (-1.5, -0.5, 0.5, 1.5), dy = (-3, -1, 0, 4): Sxy = 11, Sxx = 5
    assert least_squares_slope([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / 5)
    assert least_squares_slope([0, 1], [3, 1]) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="constant"):
        least_squares_slope([2, 2, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        least_squares_slope([1], [1])


def test_joint_fit_recovers_exact_slopes_and_matches_least_squares() -> None:
    mi = [1.0, 2.0, 3.0, 4.0, 5.0, 2.5]
    ce = [0.5, 0.4, 1.5, 1.0, 2.5, 3.0]
    exact = joint_fit(mi, ce, [0.3 + 0.02 * a - 0.05 * b for a, b in zip(mi, ce, strict=True)])
    assert exact.slopes == pytest.approx((0.02, -0.05))
    assert exact.intervals[0] == pytest.approx((0.02, 0.02), abs=1e-9)  # no residual
    noise = [0.004, -0.003, 0.001, -0.002, 0.003, -0.001]
    y = [0.3 + 0.02 * a - 0.05 * b + e for a, b, e in zip(mi, ce, noise, strict=True)]
    fit = joint_fit(mi, ce, y)
    design = np.column_stack([np.ones(6), mi, ce])
    beta, rss, *_ = np.linalg.lstsq(design, np.array(y), rcond=None)
    cov = rss[0] / (6 - 3) * np.linalg.inv(design.T @ design)
    half = 3.182446305284263 * np.sqrt(np.diag(cov))[1:]  # t(0.975, 3)
    assert fit.slopes == pytest.approx(tuple(beta[1:]))
    assert fit.intervals[0] == pytest.approx((beta[1] - half[0], beta[1] + half[0]))
    assert fit.intervals[1] == pytest.approx((beta[2] - half[1], beta[2] + half[1]))
    assert fit.r_predictors == pytest.approx(np.corrcoef(mi, ce)[0, 1])
    with pytest.raises(ValueError, match="collinear"):
        joint_fit(mi, [2 * a + 1 for a in mi], y)
    with pytest.raises(ValueError, match="at least 4"):
        joint_fit(mi[:3], ce[:3], y[:3])
