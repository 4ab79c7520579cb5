"""Split reasons are a typed value: every spelling of the file parses to a Reason and prints back the same."""

import pytest

from deepearth_jax.data import split as split_lib
from deepearth_jax.data.split.reasons import Kind, Reason, reason_group


@pytest.mark.parametrize(
    "text, kind, number, group",
    [
        ("temporal_train", Kind.TEMPORAL_TRAIN, None, "temporal"),
        ("temporal_test", Kind.TEMPORAL_TEST, None, "temporal"),
        ("spatial_test_region_3", Kind.SPATIAL_TEST, 3, "spatial"),
        ("buffer_region_12", Kind.BUFFER, 12, "buffer"),
        ("fold_0_test", Kind.FOLD_TEST, 0, "fold"),
        ("fold_7_train", Kind.FOLD_TRAIN, 7, "fold"),
        ("buffer_fold_2", Kind.FOLD_BUFFER, 2, "buffer"),
        ("not_in_split", Kind.NOT_IN_SPLIT, None, "not_in_split"),
    ],
)
def test_reason_round_trip(text, kind, number, group):
    reason = Reason.parse(text)
    assert (reason.kind, reason.number, reason.group) == (kind, number, group)
    assert str(reason) == text and str(Reason(kind, number)) == text
    assert reason_group(text) == group == split_lib.reason_group(text)


def test_unknown_reason():
    with pytest.raises(ValueError, match="unknown split reason 'spatial_test_region_x'"):
        Reason.parse("spatial_test_region_x")
    assert reason_group("something_else") == "something_else"
    with pytest.raises(ValueError, match="needs number"):
        Reason(Kind.SPATIAL_TEST)
    with pytest.raises(ValueError, match="takes no number"):
        Reason(Kind.TEMPORAL_TEST, 1)


def test_options_defaults_stated_once():
    assert split_lib.DEFAULTS == split_lib.SplitOptions()
    assert split_lib.DEFAULTS.replace(seed=3).seed == 3
    with pytest.raises(TypeError, match="unknown split option\\(s\\) regoins"):
        split_lib.DEFAULTS.replace(regoins=3)
