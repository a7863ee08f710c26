"""Magnitude histograms of activations: what calibration keeps of a tensor's values so that a
format can be fitted by the error it causes, in memory that does not grow with the data.

The bins are float32's bit patterns without their 19 lowest mantissa bits: 4096 bins, 16
to an octave over float32's whole range, so a bin's width is at most 1/16 of its values
and no range has to be guessed before the data is seen. Counting is a shift and a
`bincount`; of a large tensor every k-th value is counted (k a prime, so that the picks do
not line up with the tensor's rows or channels), at most `SAMPLED` of them per call: an
error estimate needs far fewer, and counting costs about 9 ns a value where the range
costs 0.3.
"""

from __future__ import annotations

import numpy as np

_DROPPED_BITS = 19
BINS = 1 << (31 - _DROPPED_BITS)
# Points that stand for a bin's values when an error is estimated: spread evenly over it.
_POINTS_PER_BIN = 8
SAMPLED = 1 << 20


class MagnitudeHistogram:
    """Counts of |x| over float32's range, merged over every calibration batch."""

    def __init__(self) -> None:
        self.counts = np.zeros(BINS, np.int64)

    def add(self, values: np.ndarray) -> None:
        flat = np.asarray(values, np.float32).reshape(-1)
        flat = flat[:: _prime_at_least(-(-flat.size // SAMPLED))]
        bins = (np.abs(flat).view(np.uint32) >> _DROPPED_BITS).astype(np.uint16)
        self.counts += np.bincount(bins, minlength=BINS)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Magnitudes spread over every occupied bin, and the count each stands for."""
        occupied = np.flatnonzero(self.counts)
        low, high = _edges(occupied)
        offsets = (np.arange(_POINTS_PER_BIN) + 0.5) / _POINTS_PER_BIN
        values = low[:, None] + (high - low)[:, None] * offsets
        weights = np.repeat(self.counts[occupied] / _POINTS_PER_BIN, _POINTS_PER_BIN)
        return values.reshape(-1), weights

    def percentile(self, share: float) -> float:
        """The upper edge of the bin below which `share` percent of the magnitudes lie."""
        needed = self.total * share / 100.0
        index = int(np.searchsorted(np.cumsum(self.counts), needed))
        return float(_edges(np.array([min(index, BINS - 1)]))[1][0])


def _prime_at_least(n: int) -> int:
    candidate = max(n, 1)
    while candidate > 1 and any(candidate % d == 0 for d in range(2, int(candidate**0.5) + 1)):
        candidate += 1
    return candidate


def _edges(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper value of each bin, as float64."""
    patterns = bins.astype(np.uint32) << _DROPPED_BITS
    low = patterns.view(np.float32).astype(np.float64)
    high = (patterns + np.uint32(1 << _DROPPED_BITS)).view(np.float32).astype(np.float64)
    return low, np.minimum(high, float(np.finfo(np.float32).max))
