"""Exact binary-exponent arithmetic on float32, shared by the three formats.

Every format needs the exponent of a value and powers of two. Computing them with `log2`
can be off by one at a power of two, so they come from `frexp` and `ldexp`, which are exact
for every finite float32, subnormals included.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32

# The smallest and largest exponents k for which 2**k is a finite float32 (2**-149 is the
# smallest subnormal).
MIN_POW2_EXP = -149
MAX_POW2_EXP = 127

# float32(sqrt(2)) lies just below sqrt(2), so `mantissa > SQRT2_F32` is exactly
# `mantissa > sqrt(2)` for every float32 mantissa in [1, 2).
SQRT2_F32 = F32(float.fromhex("0x1.6a09e6p+0"))  # 1.41421353816986083984375


def pow2(k: np.ndarray | int) -> np.ndarray:
    """2**k as float32, exact for integer k in [-149, 127]."""
    return np.ldexp(F32(1.0), np.asarray(k, dtype=np.int32)).astype(F32)


def floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2(a)) for positive finite float32 values, as int32, exact for subnormals too."""
    _, exponent = np.frexp(np.asarray(a, dtype=F32))
    return (exponent - 1).astype(np.int32)


def ceil_log2(value) -> np.ndarray:
    """ceil(log2(value)) of positive finite numbers (a scalar or an array, as int64), exact at
    powers of two."""
    mantissa, exponent = np.frexp(np.asarray(value, np.float64))
    return (exponent - (mantissa == 0.5)).astype(np.int64)


def round_log2(a: np.ndarray) -> np.ndarray:
    """round(log2(a)) for positive finite float32 values, as int32.

    The rounding point between 2**e and 2**(e+1) in the log domain is 2**e * sqrt(2); no
    float32 equals it, so there are no ties.
    """
    a = np.asarray(a, dtype=F32)
    e = floor_log2(a)
    mantissa = a / pow2(e)
    return (e + (mantissa > SQRT2_F32)).astype(np.int32)
