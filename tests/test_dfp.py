import math

import numpy as np
import pytest

from rcompile.formats import DFP

F32 = np.float32


def test_ristretto_worked_example_saturates_4_5_to_3_96875():
    assert DFP(8, 5).quantize(F32(4.5)) == F32(3.96875)


def test_dfp_rounds_half_to_even():
    got = DFP(8, 5).quantize(np.array([1, 3, 5, -1, -3], F32) / 64)
    np.testing.assert_array_equal(got, np.array([0, 4, 4, 0, -4], F32) / 64)


def test_dfp_saturates_at_largest_and_smallest_code():
    fmt = DFP(4, 1)
    got = fmt.quantize(np.array([100, -100, np.inf, -np.inf], F32))
    np.testing.assert_array_equal(got, [3.5, -4.0, 3.5, -4.0])
    assert (fmt.max, fmt.min) == (3.5, -4.0)


def test_dfp_zero_is_positive_zero():
    got = DFP(8, 2).quantize(np.array([-0.0, -0.1, -1e-40], F32))
    assert not np.signbit(got).any()


def test_negative_fractional_length_steps_by_powers_of_two():
    fmt = DFP(4, -2)
    assert fmt.step == 4.0
    np.testing.assert_array_equal(fmt.quantize(np.array([5, 6, 10, 100], F32)), [4, 8, 8, 28])


def test_unsigned_dfp_clips_negatives_to_zero_and_uses_every_code():
    fmt = DFP(8, 4, signed=False)
    np.testing.assert_array_equal(
        fmt.quantize(np.array([-3, 15.9375, 99], F32)), [0, 15.9375, 15.9375]
    )
    assert (fmt.code_min, fmt.code_max, fmt.name) == (0, 255, "udfp8f4")


def test_wide_dfp_largest_value_is_float32_rounded():
    fmt = DFP(32, 0)
    assert fmt.quantize(F32(1e30)) == F32(2.0**31)


def test_weight_rule_keeps_the_largest_weight_within_one_step():
    fmt = DFP.for_weights(8, max_abs=0.9)
    assert fmt.fl == 7
    assert abs(fmt.quantize(F32(0.9)) - F32(0.9)) <= fmt.step


def test_activation_rule_spends_one_bit_less_on_the_integer_part():
    assert DFP.for_activations(8, max_abs=5.0).fl == 8 - 3
    assert DFP.for_weights(8, max_abs=5.0).fl == 8 - 4


def test_unsigned_activation_keeps_the_saturation_point_with_one_more_fraction_bit():
    signed = DFP.for_activations(8, max_abs=5.0)
    unsigned = DFP.for_activations(8, max_abs=5.0, signed=False)
    assert unsigned.fl == signed.fl + 1
    assert math.isclose(unsigned.max, signed.max, rel_tol=0.01)


def test_rules_are_exact_at_powers_of_two():
    assert DFP.for_weights(8, max_abs=4.0).fl == 8 - 3
    assert DFP.for_weights(8, max_abs=math.nextafter(4.0, 5.0)).fl == 8 - 4


def test_rules_clamp_fl_for_all_zero_and_tiny_tensors():
    assert DFP.for_activations(8, max_abs=0.0).fl == 8
    assert DFP.for_weights(8, max_abs=1e-38).fl == DFP.fl_range(8)[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bw": 1, "fl": 0}, r"bw must be in \[2, 32\]"),
        ({"bw": 33, "fl": 0}, r"bw must be in \[2, 32\]"),
        ({"bw": 8, "fl": 127}, r"fl must be in \[-120, 126\] for bw=8"),
        ({"bw": 8, "fl": -121}, r"fl must be in \[-120, 126\] for bw=8"),
    ],
)
def test_invalid_parameters_are_named_with_their_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DFP(**kwargs)


def test_rules_reject_non_finite_statistics():
    with pytest.raises(ValueError, match="max_abs must be finite"):
        DFP.for_weights(8, max_abs=math.nan)
