import numpy as np

from rcompile.formats import DFP, MiniFloat, Pow2
from rcompile.formats.rounding import round_values, uniform

F32 = np.float32
SAMPLES = 1_000_000


def test_uniform_numbers_are_on_the_2_pow_minus_24_grid_in_0_1():
    u = uniform(7, np.arange(SAMPLES, dtype=np.uint64))
    assert u.min() >= 0 and u.max() < 1
    assert np.all(u * F32(2**24) == np.floor(u * F32(2**24)))
    assert abs(float(u.mean()) - 0.5) < 1e-3
    histogram = np.bincount((u * 16).astype(int), minlength=16) / SAMPLES
    assert np.all(np.abs(histogram - 1 / 16) < 2e-3)


def test_uniform_depends_only_on_seed_and_index():
    index = np.arange(1000, dtype=np.uint64)
    np.testing.assert_array_equal(uniform(3, index)[500:], uniform(3, index[500:]))
    assert not np.array_equal(uniform(3, index), uniform(4, index))


def test_stochastic_rounding_is_unbiased_over_a_million_samples():
    y = np.full(SAMPLES, 2.3, dtype=F32)
    mean = float(round_values(y, seed=11).astype(np.float64).mean())
    # Binomial standard error sqrt(0.3 * 0.7 / 1e6) = 4.6e-4; 5 sigma plus the 2**-24 grid.
    assert abs(mean - float(F32(2.3))) < 5 * 4.6e-4 + 2**-24


def test_stochastic_rounding_only_goes_to_the_two_neighbours():
    y = np.linspace(-5, 5, 10_001, dtype=F32)
    got = round_values(y, seed=1)
    assert np.all((got == np.floor(y)) | (got == np.ceil(y)))


def test_same_seed_same_bits_and_other_seed_other_bits():
    y = np.random.default_rng(0).normal(size=10_000).astype(F32) * 10
    fmt = DFP(8, 3)
    np.testing.assert_array_equal(fmt.quantize(y, seed=5), fmt.quantize(y, seed=5))
    assert not np.array_equal(fmt.quantize(y, seed=5), fmt.quantize(y, seed=6))


def test_stochastic_quantizers_are_unbiased_inside_the_range():
    cases = [(DFP(8, 4), 0.7), (MiniFloat(4, 3), 0.7), (Pow2(-8, -1), 0.3)]
    for fmt, value in cases:
        x = np.full(SAMPLES, value, dtype=F32)
        mean = float(fmt.quantize(x, seed=2).astype(np.float64).mean())
        assert abs(mean - value) < 5e-3 * value, fmt.name


def test_stochastic_rounding_passes_non_finite_values():
    got = round_values(np.array([np.inf, -np.inf, np.nan], F32), seed=0)
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2])
