"""Dynamic fixed point: a `bw`-bit two's-complement (or unsigned) integer scaled by 2**-fl."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from rcompile.formats.exact import F32, ceil_log2, pow2
from rcompile.formats.rounding import check_rounding, round_values, rounding_suffix

MIN_BW, MAX_BW = 2, 32


@dataclass(frozen=True)
class DFP:
    """DFP(bw, fl, signed, rounding): values k * 2**-fl for integers k of `bw` bits.

    `fl` (the fractional length) may be negative. Both the step 2**-fl and the largest value
    must be normal float32 numbers, which bounds fl to [bw - 128, 126]. `rounding` is the
    hardware's mode (see `rcompile.formats.rounding`).
    """

    bw: int
    fl: int
    signed: bool = True
    rounding: str = "even"

    def __post_init__(self) -> None:
        check_rounding(self.rounding)
        if not MIN_BW <= self.bw <= MAX_BW:
            raise ValueError(f"DFP bw must be in [{MIN_BW}, {MAX_BW}], got {self.bw}")
        low, high = self.fl_range(self.bw)
        if not low <= self.fl <= high:
            raise ValueError(f"DFP fl must be in [{low}, {high}] for bw={self.bw}, got {self.fl}")

    @staticmethod
    @functools.cache
    def of(bw: int, fl: int, signed: bool = True, rounding: str = "even") -> DFP:
        """The format, made once and shared: a plan holds one per weight channel (tens of
        thousands in a network), nearly all alike."""
        return DFP(bw, fl, signed, rounding)

    @staticmethod
    def fl_range(bw: int) -> tuple[int, int]:
        """The fractional lengths whose step and largest value are normal float32 numbers."""
        return bw - 128, 126

    @property
    def name(self) -> str:
        """Canonical name, e.g. `dfp8f5`, `udfp8f-2`, `dfp8f5@up`; `parse_format` reads it
        back."""
        return f"{'' if self.signed else 'u'}dfp{self.bw}f{self.fl}{rounding_suffix(self.rounding)}"

    @property
    def bit_width(self) -> int:
        return self.bw

    @property
    def code_min(self) -> int:
        return -(2 ** (self.bw - 1)) if self.signed else 0

    @property
    def code_max(self) -> int:
        return 2 ** (self.bw - 1) - 1 if self.signed else 2**self.bw - 1

    @property
    def step(self) -> float:
        """The value of one least significant bit, 2**-fl."""
        return math.ldexp(1.0, -self.fl)

    @property
    def max(self) -> float:
        """The largest value, as float32 rounds it: exact up to bw = 25 (24 unsigned); wider
        codes than float32's 24-bit significand round up to the next power of two."""
        return float(F32(math.ldexp(self.code_max, -self.fl)))

    @property
    def min(self) -> float:
        """The smallest (most negative) value."""
        return float(F32(math.ldexp(self.code_min, -self.fl)))

    def quantize(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """The NumPy reference: clip(round(x * 2**fl), code_min, code_max) * 2**-fl.

        Zero is +0 (integers have no negative zero). +-inf saturate. NaN gives an unspecified
        value: fixed point has no NaN code, so NaN is rejected before data reaches a quantizer.
        `seed` selects stochastic rounding (see `rcompile.formats.rounding`).
        """
        return quantize_fixed_point(x, self.fl, self.code_min, self.code_max, seed, self.rounding)

    @classmethod
    def for_weights(cls, bw: int, max_abs: float) -> DFP:
        """Ristretto's rule for parameters: integer length il = ceil(log2(max|w|)) + 1.

        The largest weight is representable (it is never clipped by more than one step).
        """
        return cls(bw=bw, fl=int(weight_fls(bw, max_abs)))

    @classmethod
    def for_range(cls, bw: int, max_abs: float, signed: bool = True) -> DFP:
        """The finest format whose range holds max_abs (within one step): for signed tensors
        Ristretto's weight rule, for unsigned ones the same without the sign bit."""
        integer_length = _integer_lengths(max_abs) + (1 if signed else 0)
        return cls(bw=bw, fl=int(_fls(bw, integer_length)), signed=signed)

    @classmethod
    def for_activations(cls, bw: int, max_abs: float, signed: bool = True) -> DFP:
        """Ristretto's rule for layer inputs and outputs: il = ceil(log2(max|a|)).

        One bit less than `for_range`: values above half the calibrated maximum saturate and
        every other value gains a bit of resolution. An unsigned tensor (calibrated minimum
        >= 0) keeps the same saturation point and spends the freed sign bit on one more
        fractional bit.
        """
        integer_length = _integer_lengths(max_abs) - (0 if signed else 1)
        return cls(bw=bw, fl=int(_fls(bw, integer_length)), signed=signed)


def weight_fls(bw: int, max_abs) -> np.ndarray:
    """The fractional lengths of `DFP.for_weights` (Ristretto's rule for parameters) for one
    largest magnitude or an array of them (one per channel), at once."""
    return _fls(bw, _integer_lengths(max_abs) + 1)


def code_range(bw, signed) -> tuple[np.ndarray, np.ndarray]:
    """`code_min` and `code_max` of DFP formats given as arrays of `bw` and `signed`."""
    bw, signed = np.asarray(bw, np.int64), np.asarray(signed, np.int64)
    return np.where(signed, -(2 ** (bw - 1)), 0), 2 ** (bw - signed) - 1


def quantize_fixed_point(
    x, fl, code_min, code_max, seed: int | None = None, rounding: str = "even"
) -> np.ndarray:
    """DFP quantization with parameters that may be arrays broadcast against `x` (one per
    output channel, for per-channel weights): the same float32 operations either way."""
    x = np.asarray(x, dtype=F32)
    low = np.asarray(code_min, dtype=np.float64).astype(F32)
    high = np.asarray(code_max, dtype=np.float64).astype(F32)
    fl = np.asarray(fl)
    with np.errstate(over="ignore", invalid="ignore"):
        codes = np.clip(round_values(x * pow2(fl), seed, rounding), low, high)
        return (codes * pow2(-fl) + F32(0.0)).astype(F32)


def _integer_lengths(max_abs) -> np.ndarray:
    """ceil(log2(max_abs)), with 0 for an all-zero tensor (any fl represents it)."""
    max_abs = np.asarray(max_abs, np.float64)
    if not np.all(np.isfinite(max_abs) & (max_abs >= 0)):
        raise ValueError(f"max_abs must be finite and >= 0, got {max_abs}")
    return np.where(max_abs > 0, ceil_log2(np.where(max_abs > 0, max_abs, 1.0)), 0)


def _fls(bw: int, integer_length: np.ndarray) -> np.ndarray:
    """bw - integer_length, within the fractional lengths `DFP.fl_range` allows."""
    low, high = DFP.fl_range(bw)
    return np.clip(bw - integer_length, low, high)
