"""Power-of-two weights: sign(w) * 2**e with integer e in [exp_min, exp_max].

A multiplication by such a weight is a shift. Rounding is in the log domain (Ristretto):
e = round(log2|w|), then clipped to the range. By default magnitudes that round below
2**exp_min become zero (a zero code); `zero=False` is Ristretto's own behaviour, which has
no zero and maps them to +-2**exp_min, and zero itself to +2**exp_min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rcompile.formats.exact import F32, floor_log2, pow2, round_log2
from rcompile.formats.rounding import round_values

MIN_EXP, MAX_EXP = -126, 126


@dataclass(frozen=True)
class Pow2:
    """Pow2(exp_min, exp_max, zero); Ristretto's default range is [-8, -1]."""

    exp_min: int = -8
    exp_max: int = -1
    zero: bool = True

    def __post_init__(self) -> None:
        for label, value in (("exp_min", self.exp_min), ("exp_max", self.exp_max)):
            if not MIN_EXP <= value <= MAX_EXP:
                raise ValueError(f"Pow2 {label} must be in [{MIN_EXP}, {MAX_EXP}], got {value}")
        if self.exp_min > self.exp_max:
            raise ValueError(
                f"Pow2 exp_min must be <= exp_max, got [{self.exp_min}, {self.exp_max}]"
            )

    @property
    def codes(self) -> int:
        """How many magnitudes a code can name: the exponents, plus zero if there is one."""
        return self.exp_max - self.exp_min + 1 + (1 if self.zero else 0)

    @property
    def bit_width(self) -> int:
        """A sign bit plus enough bits to number every magnitude."""
        return 1 + max(1, math.ceil(math.log2(self.codes)))

    @property
    def name(self) -> str:
        """Canonical name, e.g. `pow2e-8..-1` (zero code) or `pow2e-8..-1r` (Ristretto)."""
        return f"pow2e{self.exp_min}..{self.exp_max}{'' if self.zero else 'r'}"

    @property
    def max(self) -> float:
        return math.ldexp(1.0, self.exp_max)

    @property
    def min(self) -> float:
        return -self.max

    def quantize(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """The NumPy reference.

        Magnitudes are first clamped to [2**(exp_min-1), 2**(exp_max+1)], which changes no
        decision. Round-to-nearest compares the mantissa with sqrt(2) exactly; stochastic
        rounding (`seed`) goes up from 2**e to 2**(e+1) with probability (|w| - 2**e) / 2**e,
        which is unbiased in value between two powers inside the range. The sign is that of
        x < 0, so -0 gives +2**exp_min without a zero code (as in Ristretto); the zero code is +0
        (a code has no signed zero). NaN passes through; +-inf saturate.
        """
        return quantize_power_of_two(x, self.exp_min, self.exp_max, self.zero, seed)

    @classmethod
    def for_weights(cls, bit_width: int, max_abs: float, zero: bool = True) -> Pow2:
        """The range from the weights: exp_max is the rounded exponent of max|w|, and exp_min
        as low as the code width allows (a sign bit and bit_width-1 exponent bits)."""
        if bit_width < 2:
            raise ValueError(f"Pow2 bit_width must be >= 2, got {bit_width}")
        if not math.isfinite(max_abs) or max_abs <= 0:
            raise ValueError(f"max_abs must be finite and > 0, got {max_abs}")
        exp_max = int(round_log2(np.array([max_abs], dtype=F32))[0])
        exp_max = min(max(exp_max, MIN_EXP), MAX_EXP)
        exponents = 2 ** (bit_width - 1) - (1 if zero else 0)
        return cls(max(exp_max - exponents + 1, MIN_EXP), exp_max, zero)


def quantize_power_of_two(x, exp_min, exp_max, zero, seed: int | None = None) -> np.ndarray:
    """Pow2 quantization with parameters that may be arrays broadcast against `x` (one per
    output channel): the same operations either way."""
    x = np.asarray(x, dtype=F32)
    exp_min, exp_max = np.asarray(exp_min), np.asarray(exp_max)
    magnitude = np.clip(np.abs(x), pow2(exp_min - 1), pow2(exp_max + 1))
    magnitude = np.where(np.isnan(x), F32(1), magnitude)
    if seed is None:
        exponent = round_log2(magnitude)
    else:
        floor_exp = floor_log2(magnitude)
        fraction = magnitude / pow2(floor_exp) - F32(1)
        exponent = floor_exp + round_values(fraction, seed).astype(np.int32)
    power = pow2(np.clip(exponent, exp_min, exp_max))
    power = np.where(np.asarray(zero) & (exponent < exp_min), F32(0), power)
    sign = np.where(x < 0, F32(-1), F32(1))
    return np.where(np.isnan(x), x, sign * power + F32(0)).astype(F32)
