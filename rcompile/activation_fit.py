"""Activation formats fitted to the calibration data's distribution, not only to its maximum.

A format that holds the largest value spends its codes on a tail that few values reach; one
with a smaller range saturates that tail and resolves everything else finer. From the
tensor's magnitude histogram (`rcompile.histogram`):

- `mse`: among the format that holds the maximum and up to `FINER` formats with half, a
  quarter, ... of its range (one more fractional bit for fixed point, one more exponent
  bias for a scaled mini float), the one whose squared error summed over the histogram is
  least, computed by the format's own NumPy quantizer on points spread over every bin;
- `percentile[:P]`: the finest format that holds the P-th percentile of the magnitudes
  (99.99 by default);
- `max`: the format that holds the maximum.

Where a clamp follows (a ReLU6 after the layer), error is measured after the clamp, so
what it cuts off anyway costs nothing.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from rcompile.errors import SchemeError
from rcompile.formats import DFP, Format, MiniFloat
from rcompile.histogram import MagnitudeHistogram

ACTIVATION_FITS = ("mse", "percentile", "max")
DEFAULT_PERCENTILE = 99.99
# How many times the range may halve below the maximum's format.
FINER = 3


def parse_activation_fit(fit: str) -> tuple[str, float | None]:
    """`(kind, percentile)` of a fit name: `mse`, `max`, `percentile` or `percentile:P`."""
    kind, _, value = fit.partition(":")
    if kind not in ACTIVATION_FITS or (value and kind != "percentile"):
        raise SchemeError(
            f"activation fit must be mse, max, percentile or percentile:P, got {fit!r}"
        )
    if kind != "percentile":
        return kind, None
    try:
        share = float(value) if value else DEFAULT_PERCENTILE
    except ValueError:
        share = -1.0
    if not 0 < share <= 100:
        raise SchemeError(f"percentile must be a number in (0, 100], got {value!r}")
    return kind, share


def fit_activation(
    covering: Format,
    histogram: MagnitudeHistogram,
    fit: str,
    bounds: tuple[float, float] | None = None,
) -> Format:
    """The format `fit` chooses, starting from `covering` (the one that holds the maximum)."""
    kind, share = parse_activation_fit(fit)
    candidates = _narrower(covering)
    if kind == "max" or len(candidates) == 1 or histogram.total == 0:
        return covering
    if kind == "percentile":
        target = histogram.percentile(share)
        holding = [fmt for fmt in candidates if fmt.max >= target]
        return holding[-1] if holding else covering
    values, weights = histogram.points()
    low, high = bounds if bounds is not None else (-np.inf, np.inf)
    exact = np.clip(values, low, high)
    errors = []
    for fmt in candidates:
        got = np.clip(fmt.quantize(values.astype(np.float32)).astype(np.float64), low, high)
        errors.append(float(np.sum(weights * np.square(got - exact))))
    return candidates[int(np.argmin(errors))]


def _narrower(covering: Format) -> list[Format]:
    """`covering` and the formats of its family with up to `FINER` times half its range."""
    if isinstance(covering, DFP):
        top = DFP.fl_range(covering.bw)[1]
        fls = range(covering.fl, min(covering.fl + FINER, top) + 1)
        return [DFP.of(covering.bw, fl, covering.signed, covering.rounding) for fl in fls]
    if isinstance(covering, MiniFloat):
        top = covering.bias_range[1]
        biases = range(covering.bias, min(covering.bias + FINER, top) + 1)
        return [replace(covering, exponent_bias=bias) for bias in biases]
    return [covering]  # a format without a family to narrow
