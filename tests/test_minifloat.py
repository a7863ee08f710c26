import math

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_same_bits, float16_patterns

from rcompile.formats import MiniFloat

F32 = np.float32


def saturating_round_trip(x: np.ndarray, fmt: MiniFloat, dtype) -> np.ndarray:
    """The external oracle: a NumPy/ml_dtypes cast of the value clamped to +-max."""
    with np.errstate(invalid="ignore", over="ignore"):
        result = np.clip(x, -fmt.max, fmt.max).astype(dtype).astype(F32)
        saturated = np.sign(x) * F32(fmt.max)
    return np.where(np.isinf(x), x if fmt.has_inf else saturated, result)


def random_float32(count: int, seed: int = 0) -> np.ndarray:
    bits = np.random.default_rng(seed).integers(0, 2**32, size=count, dtype=np.uint64)
    return bits.astype(np.uint32).view(F32)


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [
        (MiniFloat(5, 10, "ieee"), np.float16),
        (MiniFloat(8, 7, "ieee"), ml_dtypes.bfloat16),
        (MiniFloat(4, 3, "fn"), ml_dtypes.float8_e4m3fn),
        (MiniFloat(5, 2, "ieee"), ml_dtypes.float8_e5m2),
    ],
    ids=lambda value: getattr(value, "name", ""),
)
def test_standard_variants_equal_saturating_round_trips(fmt, dtype):
    x = np.concatenate([float16_patterns(), random_float32(200_000)])
    assert_same_bits(fmt, x, saturating_round_trip(x, fmt, dtype), fmt.quantize(x))


def test_standard_largest_values():
    assert MiniFloat(4, 3, "fn").max == 448.0
    assert MiniFloat(5, 2, "ieee").max == 57344.0
    assert MiniFloat(5, 10, "ieee").max == 65504.0
    assert MiniFloat(8, 7, "ieee").max == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)


def test_ristretto_every_exponent_code_is_normal():
    fmt = MiniFloat(4, 3)
    assert (fmt.bias, fmt.emin, fmt.emax) == (7, -7, 8)
    assert fmt.max == (2 - 2**-3) * 2**8
    assert fmt.smallest_positive == fmt.smallest_normal == 2.0**-7


def test_ristretto_flushes_below_the_smallest_normal_to_signed_zero():
    got = MiniFloat(4, 3).quantize(np.array([2.0**-8, -(2.0**-8), 0.99 * 2.0**-7, 2.0**-7], F32))
    np.testing.assert_array_equal(got, [0.0, -0.0, 0.0, 2.0**-7])
    assert list(np.signbit(got)) == [False, True, False, False]


def test_mantissa_carry_moves_to_the_next_exponent():
    fmt = MiniFloat(4, 3)
    assert fmt.quantize(F32(1.9375)) == F32(2.0)  # 1.1111b rounds up out of the mantissa


def test_carry_past_the_largest_value_saturates_instead_of_overshooting():
    fmt = MiniFloat(4, 3)
    just_below_carry = F32(fmt.max + 2.0**4 / 2 * 0.99)
    assert fmt.quantize(just_below_carry) == F32(fmt.max)
    assert fmt.quantize(F32(1e30)) == F32(fmt.max)
    assert fmt.quantize(F32(-np.inf)) == F32(-fmt.max)


def test_mantissa_ties_round_to_even():
    fmt = MiniFloat(4, 2)
    got = fmt.quantize(np.array([1.125, 1.375, -1.125], F32))  # halfway between 1.0/1.25, 1.25/1.5
    np.testing.assert_array_equal(got, [1.0, 1.5, -1.0])


def test_nan_passes_and_ieee_keeps_infinity():
    x = np.array([np.nan, np.inf, -np.inf], F32)
    got = MiniFloat(5, 2, "ieee").quantize(x)
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf
    assert MiniFloat(4, 3, "fn").quantize(x)[1] == F32(448.0)


def test_widest_ristretto_exponent_is_capped_at_float32_range():
    fmt = MiniFloat(8, 7)
    assert fmt.emax == 127
    assert fmt.quantize(F32(np.finfo(F32).max)) == F32(fmt.max)
    assert math.isfinite(fmt.max)


def test_exponent_bits_from_range_choose_the_fewest_that_cover_it():
    fmt = MiniFloat.for_range(8, max_abs=100.0)
    assert (fmt.exp_bits, fmt.mant_bits) == (4, 3)
    assert MiniFloat(3, 4).max < 100.0 <= fmt.max


def test_range_too_wide_for_the_width_takes_the_widest_exponent():
    assert MiniFloat.for_range(6, max_abs=1e30).exp_bits == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 3), r"exp_bits must be in \[2, 8\]"),
        ((4, 24), r"mant_bits must be in \[0, 23\]"),
        ((4, 3, "posit"), "variant must be one of"),
        ((4, 0, "fn"), "variant 'fn' needs mant_bits >= 1"),
        ((8, 23), "use mant_bits <= 22"),
    ],
)
def test_invalid_parameters_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        MiniFloat(*args)
