"""A model key has one type in Python and one serialised form outside it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.keys import ModelKey, keys_of, nest, unnest


def test_a_key_is_a_target_and_whole_hours_equal_to_its_tuple():
    key = ModelKey.of("pm2_5", "6")
    assert key == ("pm2_5", 6) == ModelKey.of("pm2_5", np.int64(6))
    assert hash(key) == hash(("pm2_5", 6))
    assert key.hours == "6"
    assert key.labels() == {"target": "pm2_5", "horizon": "6"}
    assert str(key) == "pm2_5 h=6"


@pytest.mark.parametrize("spelling", ["h6", "__h6", "pm2_5/h6", "6.0", "", True, 6.0, None])
def test_the_other_spellings_of_a_horizon_are_refused(spelling):
    with pytest.raises(ValueError, match="whole hours"):
        ModelKey.of("pm2_5", spelling)


def test_nest_and_unnest_are_the_serialised_form_round_trip():
    values = {key: i for i, key in enumerate(keys_of(["pm2_5", "no2"], [1, 24]))}
    nested = nest(values)
    assert nested == {"pm2_5": {"1": 0, "24": 1}, "no2": {"1": 2, "24": 3}}
    back = unnest(json.loads(json.dumps(nested)))
    assert back == values
    assert list(back) == list(values)  # order kept
    assert all(type(k) is ModelKey and type(k.horizon) is int for k in back)
