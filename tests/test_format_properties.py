"""Invariants every format must satisfy on any float32 input (hypothesis)."""

import numpy as np
from conftest import sweep_formats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rcompile.formats import DFP

F32 = np.float32
FORMATS = sweep_formats()
formats = st.sampled_from(FORMATS)
finite_values = arrays(
    F32, st.integers(1, 64), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)
)


@settings(max_examples=300, deadline=None)
@given(formats, finite_values)
def test_quantizing_twice_changes_nothing(fmt, x):
    once = fmt.quantize(x)
    np.testing.assert_array_equal(fmt.quantize(once).view(np.uint32), once.view(np.uint32))


@settings(max_examples=300, deadline=None)
@given(formats, finite_values)
def test_results_stay_within_the_range(fmt, x):
    got = fmt.quantize(x)
    assert np.all(got <= F32(fmt.max)) and np.all(got >= F32(fmt.min))


@settings(max_examples=300, deadline=None)
@given(formats, finite_values)
def test_quantizers_are_monotonic(fmt, x):
    x = np.sort(x)
    assert np.all(np.diff(fmt.quantize(x).astype(np.float64)) >= 0)


@settings(max_examples=200, deadline=None)
@given(formats, finite_values)
def test_the_result_is_a_nearest_neighbour_under_round_to_nearest(fmt, x):
    """No representable value lies strictly closer to x than the result (inside the range)."""
    got = fmt.quantize(x).astype(np.float64)
    inside = (x >= fmt.min) & (x <= fmt.max)
    if isinstance(fmt, DFP):
        assert np.all(np.abs(got - x)[inside] <= fmt.step / 2)
