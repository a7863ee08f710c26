"""Every value of a format is a whole number of its finest step, a power of two: its code.
DFP codes are the fixed-point integers; a power-of-two weight 2**e is 2**(e - exp_min) steps
of 2**exp_min (a two-term one the sum or difference of two such); a mini float is a whole
number of steps of its smallest subnormal quantum 2**(emin - mant_bits). Codes make a
layer's sum integer arithmetic, whatever the family."""

from __future__ import annotations

import math

import numpy as np

from rcompile.formats import DFP, APoT, Format, Pow2
from rcompile.formats.apot import window_codes


def step_exponent(fmt: Format) -> int:
    """log2 of the format's finest step."""
    if isinstance(fmt, DFP):
        return -fmt.fl
    if isinstance(fmt, Pow2 | APoT):
        return fmt.exp_min
    return fmt.emin - fmt.mant_bits


def largest_code(fmt: Format) -> int:
    """The largest magnitude of a code."""
    if isinstance(fmt, DFP):
        return max(-fmt.code_min, fmt.code_max)
    if isinstance(fmt, Pow2):
        return 2 ** (fmt.exp_max - fmt.exp_min)
    if isinstance(fmt, APoT):
        return int(window_codes(fmt.window)[-1])
    return int(math.ldexp(fmt.max, -step_exponent(fmt)))


def step_exponents(formats: tuple[Format, ...]) -> np.ndarray:
    """`step_exponent` of each format (one per channel, or one)."""
    return np.array([step_exponent(fmt) for fmt in formats], np.int64)


def to_codes(values: np.ndarray, exponents: np.ndarray, axis: int | None) -> np.ndarray:
    """Quantized `values` as integer codes of steps 2**exponents, one exponent, or one per
    slice along `axis`: int64, or Python integers where codes reach 2**62 (bfloat16's codes
    reach 2**261)."""
    scale = np.ldexp(1.0, -exponents.astype(np.int64))
    if scale.size > 1:
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
    codes = values.astype(np.float64) * scale
    if not np.array_equal(codes, np.rint(codes)):
        raise ValueError("values are not on their format's grid")
    if codes.size and np.abs(codes).max() >= 2.0**62:
        return np.frompyfunc(int, 1, 1)(codes)
    return codes.astype(np.int64)
