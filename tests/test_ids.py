import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.data import ids

MALFORMED = ["12_0", "abc_1", "1_2_3", "-5_1", "", "12", "_1", "12_", "012_1", "12_01", " 12_1"]


def test_make_and_parse_round_trip():
    rng = np.random.default_rng(test_seed())
    gbif = rng.integers(0, 5_000_000_000, 50)
    index = rng.integers(1, 20, 50)
    made = ids.make_observation_ids(gbif, index)
    assert made[0] == f"{gbif[0]}_{index[0]}"
    assert ids.make_observation_id(int(gbif[1]), int(index[1])) == made[1]
    g, i = ids.parse_observation_ids(made)
    np.testing.assert_array_equal(g, gbif)
    np.testing.assert_array_equal(i, index)
    assert ids.parse_observation_id(str(made[2])) == (gbif[2], index[2])
    assert ids.make_observation_id(7) == "7_1"
    assert ids.parse_observation_id("0_1") == (0, 1)


@pytest.mark.parametrize("bad", MALFORMED)
def test_single_parse_names_malformed_id(bad):
    with pytest.raises(ValueError, match="malformed observation id") as info:
        ids.parse_observation_id(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", MALFORMED)
def test_vectorised_parse_names_malformed_id(bad):
    with pytest.raises(ValueError, match="1 malformed observation id") as info:
        ids.parse_observation_ids(["3_1", bad, "4_2"])
    assert repr(bad) in str(info.value)


def test_vectorised_parse_counts_all_malformed():
    with pytest.raises(
        ValueError, match=r"5 malformed observation id\(s\): '12_0', 'abc_1', '1_2_3', '-5_1', ''"
    ):
        ids.parse_observation_ids(["12_0", "1_1", "abc_1", "1_2_3", "-5_1", ""])
    g, i = ids.parse_observation_ids([])
    assert g.shape == i.shape == (0,)


@pytest.mark.parametrize(("gbif", "index"), [(-1, 1), (5, 0), (5, -2)])
def test_make_refuses_bad_parts(gbif, index):
    with pytest.raises(ValueError, match="must be"):
        ids.make_observation_id(gbif, index)
    with pytest.raises(ValueError, match="must be"):
        ids.make_observation_ids(np.array([1, gbif]), np.array([1, index]))
