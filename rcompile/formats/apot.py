"""Two-term power-of-two weights (additive powers of two; Li et al., "Additive
Powers-of-Two Quantization", 2020): w = +-(2**a +- 2**b) or +-2**a or 0, with integer
exponents exp_min <= b < a <= exp_max.

A multiplication by such a weight is two shifts and an add (or a subtract), still free of
multipliers, and the levels are far denser than single powers of two: a window of 8
exponents has 52 magnitudes (7-bit codes), against 9 for `Pow2` (4-bit codes).

Rounding is to the nearest level in value; a tie goes to the smaller magnitude. Magnitudes
above the largest level, 2**exp_max + 2**(exp_max - 1), saturate to it; the sign is that of
x < 0, and zero is +0. NaN passes through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from rcompile.formats.exact import F32, round_log2
from rcompile.formats.pow2 import MAX_EXP, MIN_EXP

# 2**a + 2**b is a float32 only while a - b < 24.
MAX_WINDOW = 24


@dataclass(frozen=True)
class APoT:
    """APoT(exp_min, exp_max): two-term power-of-two weights over that exponent window."""

    exp_min: int = -8
    exp_max: int = -1

    def __post_init__(self) -> None:
        for label, value in (("exp_min", self.exp_min), ("exp_max", self.exp_max)):
            if not MIN_EXP <= value <= MAX_EXP:
                raise ValueError(f"APoT {label} must be in [{MIN_EXP}, {MAX_EXP}], got {value}")
        if not 0 <= self.exp_max - self.exp_min < MAX_WINDOW:
            raise ValueError(
                f"APoT exp_min must be <= exp_max and within {MAX_WINDOW - 1} of it, got "
                f"[{self.exp_min}, {self.exp_max}]"
            )

    @property
    def window(self) -> int:
        return self.exp_max - self.exp_min + 1

    @property
    def levels(self) -> np.ndarray:
        """The magnitudes, ascending, zero first (float64, exact)."""
        return np.ldexp(window_codes(self.window), self.exp_min)

    @property
    def bit_width(self) -> int:
        """A sign bit plus enough bits to number every magnitude."""
        return 1 + max(1, math.ceil(math.log2(len(window_codes(self.window)))))

    @property
    def name(self) -> str:
        """Canonical name, e.g. `apote-8..-1`."""
        return f"apote{self.exp_min}..{self.exp_max}"

    @property
    def max(self) -> float:
        return float(self.levels[-1])

    @property
    def min(self) -> float:
        return -self.max

    def quantize(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """The NumPy reference (no stochastic rounding: `seed` must be None)."""
        if seed is not None:
            raise ValueError("two-term power-of-two weights round to the nearest level only")
        x = np.asarray(x, dtype=F32)
        levels = self.levels
        magnitude = np.minimum(np.abs(x).astype(np.float64), levels[-1])
        magnitude = np.where(np.isnan(x), 0.0, magnitude)
        above = np.clip(np.searchsorted(levels, magnitude), 1, len(levels) - 1)
        low, high = levels[above - 1], levels[above]
        # Exact in float64: the levels and float32 magnitudes share fewer than 53 bits.
        nearest = np.where(2 * magnitude > low + high, high, low)
        sign = np.where(x < 0, F32(-1), F32(1))
        return np.where(np.isnan(x), x, sign * nearest.astype(F32) + F32(0)).astype(F32)

    @classmethod
    def for_weights(cls, bit_width: int, max_abs: float) -> APoT:
        """The widest window whose magnitudes `bit_width`-bit codes (a sign bit and the
        rest) can number, topped at the rounded exponent of max|w| (which the largest level,
        1.5 times 2**exp_max, covers)."""
        if not math.isfinite(max_abs) or max_abs <= 0:
            raise ValueError(f"max_abs must be finite and > 0, got {max_abs}")
        exp_max = int(round_log2(np.array([max_abs], dtype=F32))[0])
        exp_max = min(max(exp_max, MIN_EXP), MAX_EXP)
        window = widest_window(bit_width)
        return cls(max(exp_max - window + 1, MIN_EXP), exp_max)


def widest_window(bit_width: int) -> int:
    """The most exponents whose levels `bit_width`-bit codes number."""
    if bit_width < 2:
        raise ValueError(f"APoT bit_width must be >= 2, got {bit_width}")
    window = 1
    while window < MAX_WINDOW and len(window_codes(window + 1)) <= 2 ** (bit_width - 1):
        window += 1
    return window


@lru_cache(maxsize=64)
def window_codes(window: int) -> np.ndarray:
    """The magnitudes of a window of `window` exponents in units of its smallest power:
    0, 2**a and 2**a +- 2**b for 0 <= b < a < window, ascending (read-only)."""
    powers = [1 << a for a in range(window)]
    codes = {0, *powers}
    for a, high in enumerate(powers):
        for low in powers[:a]:
            codes.update((high + low, high - low))
    result = np.array(sorted(codes), dtype=np.float64)
    result.setflags(write=False)
    return result
