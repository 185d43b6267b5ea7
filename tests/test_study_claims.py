"""The claims' rules on hand-computed records: the choice on validation, one set of seeds per
claim, the gap closure's gate, the series' per-seed slopes and the description's correlations."""

from __future__ import annotations

import math

import pytest

from clinfo_ray.study.claims import (
    DESCRIBED,
    NOT_EVALUATED,
    choose_on_validation,
    claim_seeds,
    evaluate_claims,
    gap_closure,
    values_by_seed,
)
from clinfo_ray.study.intervals import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    correlation,
    least_squares_slope,
    verdict,
)
from clinfo_ray.study.records import ClaimSpec, TrialRecord


def record(
    method: str,
    seed: int,
    val: float,
    test: float | None,
    knn: float = 0.0,
    clusters: tuple[float, float] | None = None,
) -> TrialRecord:
    return TrialRecord(
        method=method,
        seed=seed,
        loss_method="cl_infonce",
        cluster_method="tags",
        val={"linear_top1": val, "knn_top1": val - 0.1},
        test=None if test is None else {"linear_top1": test, "knn_top1": knn, "linear_top5": 0.9},
        probe={"weight_decay": 1e-4, "epochs": 50, "train_top1": 0.9},
        clusters=None
        if clusters is None
        else {
            "num_clusters": 10,
            "mutual_information_bits": clusters[0],
            "conditional_entropy_bits": clusters[1],
        },
        epochs=10,
        train_seconds=1.0,
        eval_seconds=1.0,
    )


def test_choice_is_made_on_validation_not_test() -> None:
    records = [
        # "a": best on validation (mean 0.71), worse on test
        *(record("a", s, v, t) for s, v, t in [(0, 0.70, 0.60), (1, 0.72, 0.61)]),
        # "b": best on test, mean val 0.69
        *(record("b", s, v, t) for s, v, t in [(0, 0.68, 0.80), (1, 0.70, 0.82)]),
    ]
    assert choose_on_validation(records, ["b", "a"], "linear_top1", (0, 1)) == "a"
    # the test split is never needed to choose
    no_test = [record(r.method, r.seed, r.val["linear_top1"], None) for r in records]
    assert choose_on_validation(no_test, ["b", "a"], "linear_top1", (0, 1)) == "a"


def test_choice_tie_goes_to_the_first_listed() -> None:
    records = [record("a", 0, 0.5, None), record("b", 0, 0.5, None)]
    assert choose_on_validation(records, ["b", "a"], "linear_top1", (0,)) == "b"
    assert choose_on_validation(records, ["a", "b"], "linear_top1", (0,)) == "a"
    with pytest.raises(ValueError, match="no records of method 'c'"):
        choose_on_validation(records, ["a", "c"], "linear_top1", (0,))


def test_values_by_seed_refuses_a_seed_twice() -> None:
    with pytest.raises(ValueError, match="seed 0 recorded twice"):
        values_by_seed([record("a", 0, 0.5, 0.5), record("a", 0, 0.6, 0.6)], "a", "val", "knn_top1")
    with pytest.raises(ValueError, match="no test linear_top1"):
        values_by_seed([record("a", 0, 0.5, None)], "a", "test", "linear_top1")


def test_gap_closure() -> None:
    assert gap_closure(0.62, 0.52, 0.72) == pytest.approx(0.5)
    assert gap_closure(0.80, 0.52, 0.72) == pytest.approx(1.4)  # past the reference: > 1
    assert gap_closure(0.62, 0.52, 0.52) is None
    assert gap_closure(0.62, 0.52, 0.50) is None


def _study() -> list[TrialRecord]:
    seeds = (0, 1, 2)
    rows: list[TrialRecord] = []
    # method: val, test and kNN offsets per seed; clusters (I(Z;T), H(Z|T))
    table = {
        "simclr": (0.50, [0.50, 0.52, 0.54], None),
        "tags-a": (0.62, [0.60, 0.61, 0.65], (1.0, 3.0)),  # val-best of the tags
        "tags-b": (0.60, [0.70, 0.70, 0.70], (2.0, 2.0)),  # test-best of the tags
        "kmeans": (0.55, [0.53, 0.49, 0.57], (0.5, 4.0)),
        "supcon": (0.80, [0.70, 0.72, 0.74], (3.0, 0.0)),
    }
    for method, (val, tests, clusters) in table.items():
        for seed, test in zip(seeds, tests, strict=True):
            rows.append(record(method, seed, val + 0.01 * seed, test, test - 0.05, clusters))
    return rows


def test_paired_claims_their_choice_difference_and_gap_closure() -> None:
    claims = [
        ClaimSpec("1", "tags beat SimCLR", "paired", ("tags-a", "tags-b"), "simclr", "supcon"),
        ClaimSpec("2", "k-means beats SimCLR", "paired", ("kmeans",), "simclr"),
        ClaimSpec("3", "a missing method", "paired", ("nope",), "simclr"),
        ClaimSpec(
            "5", "tags, against a noisy reference", "paired", ("tags-a",), "simclr", "kmeans"
        ),
    ]
    one, two, three, five = evaluate_claims(_study(), claims, "linear_top1")
    assert one.chosen == "tags-a"  # val 0.63 > 0.61, though tags-b is better on test
    assert one.seeds == (0, 1, 2)
    assert one.val_means == pytest.approx({"tags-a": 0.63, "tags-b": 0.61})
    assert one.difference is not None and one.difference.mean == pytest.approx(0.10)
    assert one.verdict == SUPPORTED
    assert one.gap == pytest.approx((0.62 - 0.52) / (0.72 - 0.52))
    assert one.knn_difference is not None and one.knn_difference.mean == pytest.approx(0.10)
    assert one.reference_lead is not None and one.reference_lead.mean == pytest.approx(0.20)
    assert two.verdict == INCONCLUSIVE  # differences +0.03, -0.03, +0.03
    assert two.gap is None and two.reference_lead is None
    # kmeans leads simclr by +0.01 on the means, but seed by seed +0.03, -0.03, +0.03: the ratio
    # (0.62 - 0.52) / (0.53 - 0.52) = 10 would divide by noise, so there is none
    assert five.reference_lead is not None and five.reference_lead.mean == pytest.approx(0.01)
    assert verdict(five.reference_lead.interval) == INCONCLUSIVE and five.gap is None
    assert three.verdict == NOT_EVALUATED and "nope" in three.error


def test_one_set_of_seeds_decides_the_choice_the_difference_and_the_gap() -> None:
    """A candidate strong on a seed its rivals lack must not win the choice on that seed, and
    the gap closure's gate and ratio use the seeds the difference uses."""
    rows = [
        *(record("simclr", s, 0.50, 0.50 + 0.01 * s) for s in (0, 1, 2)),
        *(record("supcon", s, 0.80, 0.70 + 0.01 * s) for s in (0, 1, 2)),
        # "a" leads "b" on validation on the shared seeds 0, 1; its seed 3 alone (0.99) would
        # make "b"'s mean over all its seeds the highest
        record("a", 0, 0.62, 0.60),
        record("a", 1, 0.62, 0.61),
        record("b", 0, 0.60, 0.62),
        record("b", 1, 0.60, 0.63),
        record("b", 3, 0.99, 0.99),
        record("a", 2, 0.62, 0.62),
    ]
    claim = ClaimSpec("1", "tags", "paired", ("a", "b"), "simclr", "supcon")
    assert claim_seeds(rows, claim) == (0, 1)
    (result,) = evaluate_claims(rows, [claim], "linear_top1")
    assert result.chosen == "a"  # on all its seeds "b" (mean 0.73) would have been chosen
    assert result.seeds == (0, 1)
    assert result.difference is not None and result.difference.seeds == (0, 1)
    assert result.reference_lead is not None and result.reference_lead.seeds == (0, 1)
    # the ratio's means on seeds 0 and 1 only: (0.605 - 0.505) / (0.705 - 0.505)
    assert result.test_means["supcon"] == pytest.approx(0.705)
    assert result.gap == pytest.approx(0.100 / 0.200)


def test_a_claim_with_one_shared_seed_is_not_evaluated_and_says_why() -> None:
    rows = [record("a", 0, 0.6, 0.6), record("b", 0, 0.5, 0.5), record("b", 1, 0.5, 0.5)]
    (result,) = evaluate_claims(rows, [ClaimSpec("1", "x", "paired", ("a",), "b")], "linear_top1")
    assert result.verdict == NOT_EVALUATED and "1 seed(s) shared by all of a, b" in result.error


def _series(h_slope_by_seed: dict[int, float]) -> list[TrialRecord]:
    """supcon (H = 0) and split-m2/m4/m16 (H = 1, 2, 4) with accuracy 0.7 + slope * H."""
    rows = []
    for seed, slope in h_slope_by_seed.items():
        for method, h in (("supcon", 0.0), ("m2", 1.0), ("m4", 2.0), ("m16", 4.0)):
            noise = 0.002 * ((seed + int(h)) % 3 - 1)
            rows.append(record(method, seed, 0.5, 0.7 + slope * h + noise, 0.5, (3.0, h)))
    return rows


def test_a_series_claim_takes_the_slope_seed_by_seed() -> None:
    falls = ClaimSpec(
        "4a",
        "falls with H",
        "series",
        methods=("supcon", "m2", "m4", "m16"),
        axis="conditional_entropy_bits",
        expect=-1,
    )
    rows = _series({0: -0.02, 1: -0.025, 2: -0.015})
    (result,) = evaluate_claims(rows, [falls], "linear_top1")
    for seed in (0, 1, 2):
        mine = [r for r in rows if r.seed == seed]
        by_hand = least_squares_slope(
            [r.clusters["conditional_entropy_bits"] for r in mine if r.clusters],
            [r.test["linear_top1"] for r in mine if r.test],
        )
        assert result.slopes[seed] == pytest.approx(by_hand)
    assert result.difference is not None
    assert result.difference.mean == pytest.approx(sum(result.slopes.values()) / 3)
    assert result.verdict == SUPPORTED
    # the same numbers against a claim that expects a rise: not supported
    rises = ClaimSpec("4b", "rises", "series", methods=falls.methods, axis=falls.axis, expect=+1)
    assert evaluate_claims(rows, [rises], "linear_top1")[0].verdict == NOT_SUPPORTED
    # slopes of both signs: inconclusive
    mixed = _series({0: -0.02, 1: 0.02, 2: 0.0})
    assert evaluate_claims(mixed, [falls], "linear_top1")[0].verdict == INCONCLUSIVE


def test_a_series_needs_each_methods_cluster_statistics() -> None:
    rows = [*_series({0: -0.02, 1: -0.02})]
    rows = [
        TrialRecord(**{**r.__dict__, "clusters": None}) if r.method == "m4" and r.seed == 1 else r
        for r in rows
    ]
    claim = ClaimSpec(
        "4a",
        "x",
        "series",
        methods=("supcon", "m2", "m4"),
        axis="conditional_entropy_bits",
        expect=-1,
    )
    (result,) = evaluate_claims(rows, [claim], "linear_top1")
    assert result.verdict == NOT_EVALUATED and "m4 seed 1" in result.error


def test_a_description_shows_correlations_and_decides_nothing() -> None:
    claim = ClaimSpec("4c", "tags", "description", methods=("tags-a", "tags-b", "kmeans", "supcon"))
    (four,) = evaluate_claims(_study(), [claim], "linear_top1")
    assert four.verdict == DESCRIBED
    # the points are method means: accuracy (0.62, 0.70, 0.53, 0.72)
    mi = correlation([1.0, 2.0, 0.5, 3.0], [0.62, 0.70, 0.53, 0.72])
    ce = correlation([3.0, 2.0, 4.0, 0.0], [0.62, 0.70, 0.53, 0.72])
    assert four.mutual_information is not None and four.conditional_entropy is not None
    assert four.mutual_information.r == pytest.approx(mi.r) and mi.r > 0
    assert four.conditional_entropy.r == pytest.approx(ce.r) and ce.r < 0
    assert [p[0] for p in four.points] == ["tags-a", "tags-b", "kmeans", "supcon"]
    assert four.joint is not None and not math.isnan(four.joint.slopes[0])


def test_claim_specs_refuse_what_cannot_be_tested() -> None:
    with pytest.raises(ValueError, match="at least 3 methods"):
        ClaimSpec(
            "4", "x", "series", methods=("a", "b"), axis="conditional_entropy_bits", expect=-1
        )
    with pytest.raises(ValueError, match="axis"):
        ClaimSpec("4", "x", "series", methods=("a", "b", "c"), axis="accuracy", expect=-1)
    with pytest.raises(ValueError, match="kind must be one of"):
        ClaimSpec("4", "x", "correlation", methods=("a", "b", "c"))  # type: ignore[arg-type]
