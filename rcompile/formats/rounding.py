"""Rounding of float32 values to integers, by mode, as accelerators differ:

- `even`: half to even (IEEE, QuantizeLinear);
- `away`: half away from zero (C `round()`, what Ristretto's kernels did);
- `up`: half up, towards +inf (add half a step, then shift: most accelerators);
- `floor`: towards -inf (the shift alone: truncation of two's complement codes);
- stochastic (a seed): up with probability equal to the fraction.

Every mode is a few exact float32 operations (floor, the fraction y - floor(y), a compare), so
the ONNX bodies and CUDA kernels repeat them bit for bit; ties are exact.

Stochastic rounding draws one uniform number per element from a counter-based generator
keyed by (seed, flat element index): the output of the SplitMix64 generator whose state is
`seed * 0x9E3779B97F4A7C15 + index` (add the gamma 0x9E3779B97F4A7C15, then the finaliser).
It needs no state, so the NumPy reference and the CUDA kernel produce the same bits for the
same seed, in any order and in any chunking.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
UNIFORM_BITS = 24
ROUNDING_MODES = ("even", "away", "up", "floor")


def uniform(seed: int, index: np.ndarray) -> np.ndarray:
    """Uniform float32 numbers k * 2**-24 (k in [0, 2**24)) keyed by seed and element index."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * GOLDEN_GAMMA + index.astype(np.uint64)
        z = z + GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    k = (z >> np.uint64(64 - UNIFORM_BITS)).astype(F32)
    return k * F32(2.0**-UNIFORM_BITS)


def check_rounding(mode: str) -> None:
    if mode not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {mode!r}")


def rounding_suffix(mode: str) -> str:
    """What a format's name adds for its rounding: nothing for `even`, else `@mode`."""
    return "" if mode == "even" else f"@{mode}"


def round_values(y: np.ndarray, seed: int | None = None, mode: str = "even") -> np.ndarray:
    """Round float32 values to integers (as float32) by `mode` (see ROUNDING_MODES).

    With a seed the rounding is stochastic whatever the mode: y rounds up with probability
    frac(y) (exactly, when frac(y) is a multiple of 2**-24, which holds for every float32
    with |y| >= 0.5), so the rounding is unbiased to within 2**-24 of one unit; the sign is
    kept (a negative value rounding to zero gives -0, as rint does), in every mode.
    """
    y = np.asarray(y, dtype=F32)
    if seed is None:
        return _ROUND[mode](y)
    down = np.floor(y)
    with np.errstate(invalid="ignore"):
        fraction = y - down
    u = uniform(seed, np.arange(y.size, dtype=np.uint64)).reshape(y.shape)
    rounded = np.copysign(down + (u < fraction).astype(F32), y)
    return np.where(np.isfinite(y), rounded, y).astype(F32)


def _half_up(y: np.ndarray) -> np.ndarray:
    """floor(y) + (y - floor(y) >= 1/2) with the sign of y: half up, exactly (a value that
    rounds to zero keeps its sign, as rint's does; inf and NaN pass)."""
    down = np.floor(y)
    with np.errstate(invalid="ignore"):
        up = np.copysign(down + (y - down >= F32(0.5)).astype(F32), y)
    return np.where(np.isfinite(y), up, y).astype(F32)


def _half_away(y: np.ndarray) -> np.ndarray:
    """|y| rounded half up, with the sign of y."""
    return np.copysign(_half_up(np.abs(y)), y).astype(F32)


_ROUND = {"even": np.rint, "away": _half_away, "up": _half_up, "floor": np.floor}
