"""Unit spellings real files use, and wind given as categories with a cumulated speed."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.units import (
    UnitError,
    compass_degrees,
    hourly_from_cumulated,
    to_canonical,
)
from pipeline.schema import MOLAR_VOLUME_L, MOLECULAR_WEIGHT


@pytest.mark.parametrize("gas", ["no2", "o3", "so2", "co"])
def test_ppm_as_the_detroit_file_writes_it(gas):
    expected = 0.05 * 1000 * MOLECULAR_WEIGHT[gas] / MOLAR_VOLUME_L
    assert to_canonical(gas, [0.05], "ppm")[0] == pytest.approx(expected)
    assert to_canonical(gas, [50.0], "ppb")[0] == pytest.approx(expected)


@pytest.mark.parametrize("spelling", ["µg/m³", "μg/m³", "ug/m3", "µg/m3", "UG/M3"])
def test_micrograms_in_every_spelling(spelling):  # U+00B5 micro sign and U+03BC mu
    assert to_canonical("pm2_5", [12.5], spelling)[0] == 12.5


def test_a_mixing_ratio_for_particles_is_refused():
    with pytest.raises(UnitError, match="particulate matter needs a mass concentration"):
        to_canonical("pm2_5", [1.0], "ppm")


def test_hourly_from_cumulated_restarts_at_a_change_and_never_guesses():
    cumulated = [1.79, 4.92, 0.89, 1.78, 9.0, 2.0, 5.0, 6.0]
    category = ["NW", "NW", "cv", "cv", "cv", "cv", None, "SE"]
    hour = [0, 1, 2, 3, 5, 6, 7, 8]  # hour 4 missing
    hourly, last = hourly_from_cumulated(cumulated, category, hour, ["a"] * 8)
    np.testing.assert_allclose(hourly, [np.nan, 3.13, 0.89, 0.89,
                                        np.nan,  # after a missing hour: cannot be told
                                        np.nan,  # the sum decreased without a change
                                        np.nan,  # no category
                                        np.nan])  # the hour before had no category
    assert last == {"a": (8, "SE", 6.0)}


def test_hourly_from_cumulated_continues_across_parts_and_groups():
    first, carry = hourly_from_cumulated([1.0, 3.0, 2.0], ["NE", "NE", "SE"], [0, 1, 0],
                                         ["a", "a", "b"])
    second, carry = hourly_from_cumulated([4.5, 2.5], ["NE", "SE"], [2, 1], ["a", "b"], carry)
    np.testing.assert_allclose(first, [np.nan, 2.0, np.nan])
    np.testing.assert_allclose(second, [1.5, 0.5])


def test_hourly_from_cumulated_refuses_rows_out_of_time_order():
    with pytest.raises(ValueError, match=r"rows of 'a' are not in time order \(1 row"):
        hourly_from_cumulated([1.0, 2.0, 3.0], ["NE"] * 3, [0, 2, 1], ["a"] * 3)


def test_compass_categories_become_degrees_calm_has_none():
    degrees, unknown = compass_degrees(["NE", "cv", None, " SE", "SW"],
                                       {"NE": 45, "SE": 135, "cv": None})
    np.testing.assert_array_equal(degrees, [45, np.nan, np.nan, 135, np.nan])
    assert unknown == ["SW"]
