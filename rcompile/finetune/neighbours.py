"""The two values of a format on either side of each weight: the choice learned rounding
makes. Round-to-nearest takes the closer one; `rcompile.finetune.rounding` learns, per
weight, which of the two serves the layer's output better.

For a value inside the format's range, `below <= x <= above`, both are values of the format
(its quantizer returns them unchanged), and its round-to-nearest result is one of them. A
value on the grid has `below == above`; a value past the range has both at the end it
passed; a power-of-two format without zero has no value between its smallest of either
sign, and there both are the smallest of the value's sign.
"""

from __future__ import annotations

import numpy as np
import torch

from rcompile.finetune.graph import along
from rcompile.formats import DFP, APoT, Format, MiniFloat, Pow2


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent)


def _dfp(x: torch.Tensor, fmt: DFP) -> tuple[torch.Tensor, torch.Tensor]:
    codes = x * 2.0**fmt.fl
    low, high = float(fmt.code_min), float(fmt.code_max)
    below = torch.clamp(torch.floor(codes), low, high) * 2.0**-fmt.fl
    above = torch.clamp(torch.ceil(codes), low, high) * 2.0**-fmt.fl
    return below, above


def _dfp_channels(
    x: torch.Tensor, formats: tuple[DFP, ...], axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_dfp` with each channel's constants broadcast along `axis` (the same arithmetic)."""
    up, down, low, high = (
        along(np.array(values, np.float32), x, axis)
        for values in (
            [2.0**f.fl for f in formats],
            [2.0**-f.fl for f in formats],
            [f.code_min for f in formats],
            [f.code_max for f in formats],
        )
    )
    codes = x * up
    below = torch.minimum(torch.maximum(torch.floor(codes), low), high) * down
    above = torch.minimum(torch.maximum(torch.ceil(codes), low), high) * down
    return below, above


def _magnitudes_pow2(m: torch.Tensor, fmt: Pow2) -> tuple[torch.Tensor, torch.Tensor]:
    bottom, top = 2.0**fmt.exp_min, 2.0**fmt.exp_max
    exponent = torch.frexp(torch.clamp(m, bottom, top)).exponent - 1
    low = _pow2(exponent)
    high = torch.where(m > low, _pow2(torch.clamp(exponent + 1, max=fmt.exp_max)), low)
    if fmt.zero:
        under = m < bottom
        low = torch.where(under, torch.zeros_like(m), low)
        high = torch.where(m == 0, torch.zeros_like(m), high)
    return low, high


def _magnitudes_minifloat(m: torch.Tensor, fmt: MiniFloat) -> tuple[torch.Tensor, torch.Tensor]:
    largest = float(np.float32(fmt.max))
    normal = float(np.float32(fmt.smallest_normal))
    m = torch.clamp(m, max=largest)
    exponent = torch.frexp(torch.clamp(m, min=normal)).exponent - 1
    quantum = _pow2(exponent - fmt.mant_bits)
    low, high = torch.floor(m / quantum) * quantum, torch.ceil(m / quantum) * quantum
    if not fmt.has_subnormals:
        under = m < normal
        low = torch.where(under, torch.zeros_like(m), low)
        high = torch.where(under & (m > 0), torch.full_like(m, normal), high)
    return low, torch.clamp(high, max=largest)


def _magnitudes_apot(m: torch.Tensor, fmt: APoT) -> tuple[torch.Tensor, torch.Tensor]:
    levels = torch.from_numpy(np.array(fmt.levels)).to(m.device)
    m64 = torch.clamp(m.to(torch.float64), max=float(levels[-1]))
    index = torch.clamp(torch.bucketize(m64, levels), 0, len(levels) - 1)
    high = levels[index]
    low = torch.where(high > m64, levels[torch.clamp(index - 1, min=0)], high)
    return low.to(torch.float32), high.to(torch.float32)


_MAGNITUDES = {Pow2: _magnitudes_pow2, MiniFloat: _magnitudes_minifloat, APoT: _magnitudes_apot}


def neighbours(x: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """`(below, above)`: the format's values next to each element of float32 `x`."""
    x = x.to(torch.float32)
    if isinstance(fmt, DFP):
        return _dfp(x, fmt)
    low, high = _MAGNITUDES[type(fmt)](x.abs(), fmt)
    negative = x < 0
    return torch.where(negative, -high, low), torch.where(negative, -low, high)


def neighbours_per_channel(
    x: torch.Tensor, formats: tuple[Format, ...], axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`neighbours` with each slice along `axis` in its own format (one format: all)."""
    if len(formats) == 1:
        return neighbours(x, formats[0])
    if all(isinstance(f, DFP) for f in formats):
        return _dfp_channels(x.to(torch.float32), formats, axis)
    pairs = [neighbours(s, f) for s, f in zip(torch.unbind(x, axis), formats, strict=True)]
    return tuple(torch.stack(side, axis) for side in zip(*pairs, strict=True))
