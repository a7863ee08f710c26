"""The output of an integer layer: its exact accumulator, a whole number of steps 2**e,
rounded once to the output format. DFP rounds by an integer shift (half to even on the
discarded bits), saturating to the format's codes; a mini float rounds the exact value,
which float64 holds, with the same steps as the format's NumPy reference."""

from __future__ import annotations

import numpy as np

from rcompile.formats import DFP, Format, MiniFloat
from rcompile.formats.exact import F32

# Accumulators beyond this do not fit float64 exactly.
FLOAT64_EXACT = 2**53


def requantize(accumulator: np.ndarray, exponent: np.ndarray, fmt: Format) -> np.ndarray:
    """float32 values of `fmt` nearest `accumulator * 2**exponent` (exponent broadcasts)."""
    if isinstance(fmt, DFP):
        codes = shift_round(accumulator, np.asarray(exponent, np.int64) + fmt.fl)
        codes = np.clip(codes, fmt.code_min, fmt.code_max)
        return (np.ldexp(codes.astype(np.float64), -fmt.fl).astype(F32) + F32(0)).astype(F32)
    if isinstance(fmt, MiniFloat):
        if np.any(np.abs(accumulator) >= FLOAT64_EXACT):
            raise ValueError("an accumulator exceeds 2**53, beyond an exact mini-float rounding")
        return minifloat_of(np.ldexp(accumulator.astype(np.float64), exponent), fmt)
    raise ValueError(f"{fmt.name} is a weight format, not an activation format")


def shift_round(value: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """value * 2**shift rounded to an integer, half to even, in int64 arithmetic: a left
    shift where `shift` >= 0, else a right shift that rounds on the bits it drops."""
    value, shift = np.broadcast_arrays(np.asarray(value, np.int64), np.asarray(shift, np.int64))
    left = np.clip(shift, 0, 62)
    right = np.clip(-shift, 0, 62)
    # A left shift that would overflow int64 saturates at 2**62, beyond every format.
    fits = np.abs(value) < (np.int64(1) << (62 - left))
    widened = np.where(fits, value << left, np.sign(value) << 62)
    floor = value >> right
    remainder = value - (floor << right)
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    up = (right > 0) & ((remainder > half) | ((remainder == half) & (floor % 2 == 1)))
    return np.where(shift >= 0, widened, floor + up)


def minifloat_of(value: np.ndarray, fmt: MiniFloat) -> np.ndarray:
    """`fmt.quantize` on exact float64 values (the layer sums are not float32 numbers)."""
    clamped = np.clip(value, -fmt.max, fmt.max)
    magnitude = np.abs(clamped)
    _, exponent = np.frexp(np.maximum(magnitude, fmt.smallest_normal))
    quantum = np.ldexp(1.0, exponent - 1 - fmt.mant_bits)
    result = np.rint(clamped / quantum) * quantum
    if not fmt.has_subnormals:
        result = np.where(magnitude < fmt.smallest_normal, clamped * 0.0, result)
    return result.astype(F32)
