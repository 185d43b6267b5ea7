"""The validation split: a salted hash of the id, independent of the train/test hash."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from clinfo_ray.config import ConfigError
from clinfo_ray.config.sections import DataConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.splits import val_mask
from clinfo_ray.data.write.sources.source_table import hash_split

IDS = [f"google/{i:05X}" for i in range(10_000)]


def test_fraction_zero_holds_out_nothing() -> None:
    mask = val_mask(IDS, 0.0)
    assert mask.dtype == np.bool_ and mask.shape == (len(IDS),)
    assert not mask.any()


def test_share_is_the_fraction_within_binomial_tolerance() -> None:
    for fraction in (0.05, 0.1, 0.5):
        share = val_mask(IDS, fraction).mean()
        sigma = np.sqrt(fraction * (1 - fraction) / len(IDS))
        assert abs(share - fraction) < 4 * sigma, (fraction, share)


def test_deterministic_in_any_order_and_container() -> None:
    mask = val_mask(IDS, 0.1)
    np.testing.assert_array_equal(mask, val_mask(pa.array(IDS), 0.1))
    np.testing.assert_array_equal(mask, val_mask(pa.chunked_array([IDS[:10], IDS[10:]]), 0.1))
    order = np.random.default_rng(0).permutation(len(IDS))
    np.testing.assert_array_equal(mask[order], val_mask([IDS[i] for i in order], 0.1))
    # a larger fraction only adds rows: a sweep over val_fraction nests its splits
    assert not (mask & ~val_mask(IDS, 0.2)).any()


def test_independent_of_the_train_test_hash() -> None:
    """Were the salts shared, the val rows (u < 0.1) would all be test rows (u < 0.2)."""
    test = np.array([hash_split(i, 0.2) == C.TEST for i in IDS])
    val = val_mask(IDS, 0.1)
    # independent draws: P(val | test) = P(val) = 0.1, within 4 sigma on ~2,000 test rows
    sigma = np.sqrt(0.1 * 0.9 / test.sum())
    assert abs(val[test].mean() - 0.1) < 4 * sigma
    assert abs(val[~test].mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / (~test).sum())


def test_bad_fraction_and_null_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        val_mask(IDS, 1.0)
    with pytest.raises(ValueError, match="null"):
        val_mask(pa.array(["a", None]), 0.1)


def test_config_field_defaults_to_a_tenth_and_is_range_checked() -> None:
    assert DataConfig().val_fraction == 0.1
    assert DataConfig(val_fraction=0).val_fraction == 0.0
    with pytest.raises(ConfigError, match=r"data\.val_fraction: must be in \[0, 1\)"):
        DataConfig(val_fraction=1.0)


def test_a_million_ids_take_seconds_not_minutes() -> None:
    ids = pa.array([f"img/{i}" for i in range(1_000_000)])
    start = time.perf_counter()
    mask = val_mask(ids, 0.1)
    assert time.perf_counter() - start < 10.0  # ~0.6 s measured; generous for a busy machine
    assert abs(mask.mean() - 0.1) < 0.002


def test_id_suffix_keeps_every_rendering_of_an_emoji_on_one_side() -> None:
    keys = [f"{i:05X}" for i in range(2000)]
    ids = [f"{style}/{key}" for key in keys for style in ("google", "apple", "twitter")]
    mask = val_mask(ids, 0.1, "id_suffix").reshape(len(keys), 3)
    assert (mask.all(axis=1) | ~mask.any(axis=1)).all()  # all three renderings, or none
    assert 150 < mask[:, 0].sum() < 250  # a tenth of the emoji
    by_id = val_mask(ids, 0.1).reshape(len(keys), 3)
    assert not (by_id.all(axis=1) | ~by_id.any(axis=1)).all()  # per id they do split up
    with pytest.raises(ValueError, match="val_group"):
        val_mask(ids, 0.1, "style")
