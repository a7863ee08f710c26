"""Activation formats fitted to the calibration distribution: the magnitude histogram, and the
mse and percentile fits that read it."""

from __future__ import annotations

import numpy as np
import pytest

from rcompile.activation_fit import fit_activation, parse_activation_fit
from rcompile.errors import SchemeError
from rcompile.formats import DFP, MiniFloat
from rcompile.histogram import SAMPLED, MagnitudeHistogram


def histogram_of(*arrays: np.ndarray) -> MagnitudeHistogram:
    histogram = MagnitudeHistogram()
    for values in arrays:
        histogram.add(values)
    return histogram


def heavy_tailed(seed: int, count: int = 200_000) -> np.ndarray:
    """Laplacian values with a few outliers 20x their scale: the case a maximum misleads."""
    rng = np.random.default_rng(seed)
    values = rng.laplace(size=count).astype(np.float32)
    values[:5] = 20.0 * rng.choice([-1.0, 1.0], size=5)
    return values


def squared_error(fmt, values: np.ndarray, bounds=(-np.inf, np.inf)) -> float:
    low, high = bounds
    got = np.clip(fmt.quantize(values).astype(np.float64), low, high)
    return float(np.sum(np.square(got - np.clip(values.astype(np.float64), low, high))))


def test_the_histogram_counts_every_value_of_a_small_tensor_and_merges_batches():
    values = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32)
    histogram = histogram_of(values[:2], values[2:])
    assert histogram.total == values.size
    for share in (50.0, 90.0, 99.0):
        want = float(np.percentile(np.abs(values), share))
        assert want <= histogram.percentile(share) <= want * (1 + 1 / 8)


def test_a_large_tensor_is_sampled_and_still_gives_its_percentiles():
    values = np.random.default_rng(1).normal(size=8 * SAMPLED).astype(np.float32)
    histogram = histogram_of(values)
    assert SAMPLED // 2 <= histogram.total <= SAMPLED
    want = float(np.percentile(np.abs(values), 99.0))
    assert want * 0.97 <= histogram.percentile(99.0) <= want * 1.1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "family",
    [DFP.of(8, 0, True), DFP.of(6, 0, True), MiniFloat(4, 3, "fn"), MiniFloat(3, 2, "fn")],
    ids=["dfp8", "dfp6", "fp8e4m3fn", "fp6e3m2fn"],
)
def test_mse_picks_the_format_with_the_least_error_on_the_data_itself(seed, family):
    values = heavy_tailed(seed)
    max_abs = float(np.abs(values).max())
    covering = (
        DFP.for_range(family.bw, max_abs, signed=True)
        if isinstance(family, DFP)
        else family.covering(max_abs)
    )
    chosen = fit_activation(covering, histogram_of(values), "mse")
    # fixed point gives the outliers' range up; a float's precision is relative, so there
    # a narrower range gains only where values fall below its smallest normal
    assert chosen != covering or isinstance(family, MiniFloat)
    candidates = [
        DFP.of(covering.bw, covering.fl + k, True)
        if isinstance(covering, DFP)
        # a scaled mini float halves its range with each step of its exponent bias
        else MiniFloat(covering.exp_bits, covering.mant_bits, "fn", exponent_bias=covering.bias + k)
        for k in range(4)
    ]
    errors = [squared_error(fmt, values) for fmt in candidates]
    assert squared_error(chosen, values) <= min(errors) * 1.05


def test_mse_keeps_the_maximum_where_nothing_is_an_outlier():
    values = np.random.default_rng(5).uniform(-3, 3, size=100_000).astype(np.float32)
    covering = DFP.for_range(8, float(np.abs(values).max()), signed=True)
    assert fit_activation(covering, histogram_of(values), "mse") == covering


def test_error_after_a_clamp_costs_nothing_above_it():
    """A ReLU6 output saturating at 6 in a tenth of the values: narrowing the range below 6
    would cut all of them, so the covering format stays."""
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.uniform(0, 6, 90_000), np.full(10_000, 6.0)]).astype(np.float32)
    covering = DFP.for_range(8, 6.0, signed=False)
    assert fit_activation(covering, histogram_of(values), "mse", bounds=(0.0, 6.0)) == covering


def test_percentile_holds_its_share_of_the_values_in_the_finest_format():
    values = heavy_tailed(7)
    covering = DFP.for_range(8, float(np.abs(values).max()), signed=True)
    chosen = fit_activation(covering, histogram_of(values), "percentile:99.9")
    target = float(np.percentile(np.abs(values), 99.9))
    finer = DFP.of(chosen.bw, chosen.fl + 1, True)
    assert chosen.max >= target > finer.max * 0.9
    assert fit_activation(covering, histogram_of(values), "max") == covering


@pytest.mark.parametrize(
    "bad", ["least", "max:3", "percentile:0", "percentile:101", "percentile:x"]
)
def test_a_bad_fit_name_is_one_line(bad):
    with pytest.raises(SchemeError, match=r"activation fit|percentile must be"):
        parse_activation_fit(bad)
    assert parse_activation_fit("percentile") == ("percentile", 99.99)


def test_compile_collects_histograms_only_for_a_fit_that_reads_them():
    """LeNet-5 end to end: `percentile:50` narrows activation formats that `max` (the
    default, which calibrates without histograms) sizes to the largest value."""
    from pathlib import Path

    import rcompile
    from rcompile.plan import PlanOptions

    models = Path(__file__).resolve().parents[1] / "models"
    lenet, calib = models / "lenet5.onnx", models / "mnist_calib.npz"

    def input_fls(**options) -> list[int]:
        result = rcompile.compile(
            lenet, "dfp8", calib, calib_count=50, options=PlanOptions(**options)
        )
        return [layer.inputs[0].fl for layer in result.plan.layers]

    by_max, by_median = input_fls(), input_fls(activation_fit="percentile:50")
    assert all(m >= b for m, b in zip(by_median, by_max, strict=True)) and by_median != by_max
