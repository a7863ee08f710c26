"""The output of an integer layer: its exact accumulator, a whole number of steps 2**e,
rounded once to the output format by the format's rounding mode. DFP rounds by an integer
shift (on the discarded bits), saturating to the format's codes; a mini float rounds the
exact value, which float64 holds (else Python integers), with the same steps as the format's
NumPy reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rcompile.formats import DFP, Format, MiniFloat
from rcompile.formats.exact import F32

# Accumulators beyond this do not fit float64 exactly.
FLOAT64_EXACT = 2**53


def requantize(accumulator: np.ndarray, exponent: np.ndarray, fmt: Format) -> np.ndarray:
    """float32 values of `fmt` nearest `accumulator * 2**exponent` (exponent broadcasts)."""
    if isinstance(fmt, DFP):
        codes = shift_round(accumulator, np.asarray(exponent, np.int64) + fmt.fl, fmt.rounding)
        codes = np.clip(codes, fmt.code_min, fmt.code_max)
        return (np.ldexp(codes.astype(np.float64), -fmt.fl).astype(F32) + F32(0)).astype(F32)
    if isinstance(fmt, MiniFloat):
        if accumulator.dtype == object:
            exponents = np.broadcast_to(exponent, accumulator.shape)
            rounding = _IntegerRounding(
                fmt.emin, fmt.mant_bits, fmt.max, fmt.has_subnormals, fmt.rounding
            )
            rounded = [
                rounding(int(a), int(e))
                for a, e in zip(accumulator.ravel(), exponents.ravel(), strict=True)
            ]
            return np.array(rounded, F32).reshape(accumulator.shape)
        if np.any(np.abs(accumulator) >= FLOAT64_EXACT):
            return _minifloat_of_int64(accumulator, np.asarray(exponent, np.int64), fmt)
        return minifloat_of(np.ldexp(accumulator.astype(np.float64), exponent), fmt)
    raise ValueError(f"{fmt.name} is a weight format, not an activation format")


@dataclass(frozen=True)
class _IntegerRounding:
    """A mini float's rounding of value * 2**exponent for one exact Python integer (any
    size), its limits read once: sums past int64 are rounded one by one."""

    emin: int
    mant_bits: int
    largest: float
    has_subnormals: bool
    mode: str

    def __call__(self, value: int, exponent: int) -> float:
        magnitude = abs(value)
        if magnitude == 0:
            return 0.0
        top = magnitude.bit_length() - 1 + exponent  # floor(log2) of the exact value
        if top < self.emin and not self.has_subnormals:
            return math.copysign(0.0, value)
        drop = max(top, self.emin) - self.mant_bits - exponent
        if drop > 0:
            result = math.ldexp(_shift_round_int(value, drop, self.mode), exponent + drop)
        else:
            result = math.ldexp(value, exponent)
        return math.copysign(min(abs(result), self.largest), value)


def _minifloat_of_int64(value: np.ndarray, exponent: np.ndarray, fmt: MiniFloat) -> np.ndarray:
    """`_IntegerRounding` on int64 arrays at once (sums past 2**53 that int64 holds): the
    same exact steps, with the bit length found from float64 and corrected where the
    conversion rounded up to the next power of two."""
    value, exponent = np.broadcast_arrays(value.astype(np.int64), exponent)
    magnitude = np.abs(value)
    length = np.frexp(magnitude.astype(np.float64))[1].astype(np.int64)
    length -= (np.int64(1) << np.maximum(length - 1, 0)) > magnitude
    top = length - 1 + exponent
    drop = np.maximum(top, fmt.emin) - fmt.mant_bits - exponent
    rounded = shift_round(value, np.minimum(-drop, 0), fmt.rounding)
    result = np.ldexp(rounded.astype(np.float64), exponent + np.maximum(drop, 0))
    result = np.copysign(np.minimum(np.abs(result), fmt.max), value)
    flushed = (top < fmt.emin) & (not fmt.has_subnormals)
    result = np.where(flushed | (magnitude == 0), np.copysign(0.0, result), result)
    return result.astype(F32)


def _shift_round_int(value: int, drop: int, mode: str) -> int:
    """value / 2**drop rounded to an integer by `mode` (Python integers, any size)."""
    if mode == "away":
        rounded = _shift_round_int(abs(value), drop, "up")
        return rounded if value >= 0 else -rounded
    floor = value >> drop
    remainder, half = value - (floor << drop), 1 << (drop - 1)
    if mode == "floor":
        return floor
    if mode == "up":
        return floor + (remainder >= half)
    return floor + (remainder > half or (remainder == half and floor & 1))


def shift_round(value: np.ndarray, shift: np.ndarray, mode: str = "even") -> np.ndarray:
    """value * 2**shift rounded to an integer by `mode`, in int64 arithmetic: a left shift
    where `shift` >= 0, else a right shift that rounds on the bits it drops (`floor` is the
    shift alone, `up` adds half first, `away` rounds the magnitude up, `even` breaks ties
    to the even result)."""
    value, shift = np.broadcast_arrays(np.asarray(value, np.int64), np.asarray(shift, np.int64))
    left = np.clip(shift, 0, 62)
    right = np.clip(-shift, 0, 62)
    # A left shift that would overflow int64 saturates at 2**62, beyond every format.
    fits = np.abs(value) < (np.int64(1) << (62 - left))
    widened = np.where(fits, value << left, np.sign(value) << 62)
    source = np.abs(value) if mode == "away" else value
    floor = source >> right
    remainder = source - (floor << right)
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    if mode == "floor":
        up = np.zeros_like(floor, dtype=bool)
    elif mode in ("up", "away"):
        up = (right > 0) & (remainder >= half)
    else:
        up = (right > 0) & ((remainder > half) | ((remainder == half) & (floor % 2 == 1)))
    rounded = floor + up
    if mode == "away":
        rounded = np.where(value < 0, -rounded, rounded)
    return np.where(shift >= 0, widened, rounded)


def minifloat_of(value: np.ndarray, fmt: MiniFloat) -> np.ndarray:
    """`fmt.quantize` on exact float64 values (the layer sums are not float32 numbers)."""
    clamped = np.clip(value, -fmt.max, fmt.max)
    magnitude = np.abs(clamped)
    _, exponent = np.frexp(np.maximum(magnitude, fmt.smallest_normal))
    quantum = np.ldexp(1.0, exponent - 1 - fmt.mant_bits)
    result = _round64(clamped / quantum, fmt.rounding) * quantum
    if not fmt.has_subnormals:
        result = np.where(magnitude < fmt.smallest_normal, clamped * 0.0, result)
    return result.astype(F32)


def _round64(y: np.ndarray, mode: str) -> np.ndarray:
    """`rcompile.formats.rounding.round_values` in float64 (exact for these values)."""
    if mode == "even":
        return np.rint(y)
    if mode == "floor":
        return np.floor(y)
    source = np.abs(y) if mode == "away" else y
    down = np.floor(source)
    return np.copysign(down + (source - down >= 0.5), y)
