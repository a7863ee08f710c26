import numpy as np
import pytest

from rcompile.formats import Pow2
from rcompile.formats.exact import SQRT2_F32

F32 = np.float32


def test_rounds_in_the_log_domain():
    fmt = Pow2(-8, 3)
    got = fmt.quantize(np.array([1.4, 1.5, 3.0, 0.3, -0.7], F32))
    np.testing.assert_array_equal(got, [1.0, 2.0, 4.0, 0.25, -0.5])


def test_rounding_point_is_exactly_sqrt2():
    below, above = SQRT2_F32, np.nextafter(SQRT2_F32, F32(2))
    assert below < np.sqrt(2.0) < above
    np.testing.assert_array_equal(Pow2(-8, 3).quantize(np.array([below, above], F32)), [1.0, 2.0])


def test_clips_the_exponent_to_the_range():
    fmt = Pow2(-8, -1)
    np.testing.assert_array_equal(
        fmt.quantize(np.array([5.0, -np.inf, 0.004], F32)), [0.5, -0.5, 2.0**-8]
    )


def test_magnitudes_below_half_a_step_under_the_range_become_the_positive_zero_code():
    fmt = Pow2(-8, -1)
    threshold = F32(2.0**-8 / np.sqrt(2.0))
    got = fmt.quantize(np.array([np.nextafter(threshold, F32(0)), -0.001, 0.0, -0.0], F32))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 0.0])
    assert not np.signbit(got).any()
    assert fmt.quantize(np.nextafter(threshold, F32(1))) == F32(2.0**-8)


def test_ristretto_mode_has_no_zero_and_maps_zero_to_the_smallest_power():
    fmt = Pow2(-8, -1, zero=False)
    got = fmt.quantize(np.array([0.0, -0.0, 1e-9, -1e-9], F32))
    np.testing.assert_array_equal(got, [2.0**-8, 2.0**-8, 2.0**-8, -(2.0**-8)])


def test_nan_passes_through():
    assert np.isnan(Pow2().quantize(F32(np.nan)))


def test_bit_width_counts_the_sign_and_the_exponent_codes():
    assert Pow2(-8, -1, zero=False).bit_width == 4  # Ristretto's 4-bit codes
    assert Pow2(-8, -1).bit_width == 5  # the zero code needs a ninth code
    assert Pow2(-7, -1).bit_width == 4


def test_range_from_weights_tops_out_at_the_rounded_largest_weight():
    fmt = Pow2.for_weights(4, max_abs=0.6)
    assert (fmt.exp_min, fmt.exp_max, fmt.bit_width) == (-7, -1, 4)
    assert Pow2.for_weights(4, max_abs=0.6, zero=False).exp_min == -8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-127, 0), r"exp_min must be in \[-126, 126\]"),
        ((0, 127), r"exp_max must be in"),
        ((2, 1), "exp_min must be <= exp_max"),
    ],
)
def test_invalid_ranges_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        Pow2(*args)


def test_fitted_windows_lose_no_accuracy_per_channel_and_drop_below_an_outlier():
    """Per channel, `mse` takes the window with the least squared error among the largest
    weight's and the two below it: never worse than `max`; a channel whose largest weight
    is a lone outlier gives the outlier up for the rest."""
    from rcompile.scheme import Pow2Rule

    rng = np.random.default_rng(3)
    rows = (rng.laplace(scale=0.01, size=(16, 64)) * rng.uniform(0.2, 5, size=(16, 1))).astype(F32)
    rows[0] = np.where(rows[0] < 0, -0.125, 0.125)
    rows[0, 0] = 1.0  # three exponents above the rest, which the top window flushes to zero
    maxima = np.abs(rows).max(axis=1)
    rule = Pow2Rule(3)  # three exponents and zero: a narrow window

    def errors(windows):
        return np.array(
            [
                np.sum(np.square(w.quantize(r) - r, dtype=np.float64))
                for w, r in zip(windows, rows, strict=True)
            ]
        )

    by_max, fitted = rule.for_channels(maxima, rows, "max"), rule.for_channels(maxima, rows, "mse")
    assert np.all(errors(fitted) <= errors(by_max))
    assert fitted[0].exp_max < by_max[0].exp_max
    assert all(
        f.exp_max - f.exp_min == m.exp_max - m.exp_min for f, m in zip(fitted, by_max, strict=True)
    )
