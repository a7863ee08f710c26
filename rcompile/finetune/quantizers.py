"""The three quantizers in PyTorch, bit for bit the NumPy reference in the forward pass, with
the straight-through estimator in the backward pass (the gradient passes unchanged where the
input lies inside the format's range, and is zero where it saturates).

On the CPU, DFP with round-to-nearest-even goes through torch's own
`fake_quantize_per_tensor_affine` / `_per_channel_affine` (one fused pass; exact, since the
scale is a power of two); the other formats mirror `rcompile.formats` operation by operation
in float32. On a CUDA tensor, rcompile's CuPy kernels quantize in place of both, reading and
writing torch's memory through DLPack. Stochastic rounding draws its uniform numbers from
the reference generator itself, so training rounds exactly as the NumPy reference would.
"""

from __future__ import annotations

import numpy as np
import torch

from rcompile.formats import DFP, APoT, Format, MiniFloat, Pow2
from rcompile.formats.exact import SQRT2_F32
from rcompile.formats.rounding import uniform


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent)


def _floor_log2(value: torch.Tensor) -> torch.Tensor:
    return torch.frexp(value).exponent - 1


def _half_up(y: torch.Tensor) -> torch.Tensor:
    down = torch.floor(y)
    up = torch.copysign(down + (y - down >= 0.5).to(torch.float32), y)
    return torch.where(torch.isfinite(y), up, y)


_MODES = {
    "even": torch.round,
    "floor": torch.floor,
    "up": _half_up,
    "away": lambda y: torch.copysign(_half_up(y.abs()), y),
}


def _round(y: torch.Tensor, seed: int | None, mode: str = "even") -> torch.Tensor:
    if seed is None:
        return _MODES[mode](y)
    down = torch.floor(y)
    u = torch.from_numpy(uniform(seed, np.arange(y.numel(), dtype=np.uint64)))
    u = u.reshape(y.shape).to(y.device)
    rounded = torch.copysign(down + (u < (y - down)).to(torch.float32), y)
    return torch.where(torch.isfinite(y), rounded, y)


def _dfp(x: torch.Tensor, fmt: DFP, seed: int | None) -> torch.Tensor:
    codes = _round(x * 2.0**fmt.fl, seed, fmt.rounding)
    codes = torch.clamp(codes, float(np.float32(fmt.code_min)), float(np.float32(fmt.code_max)))
    return codes * 2.0**-fmt.fl + 0.0


def _minifloat(x: torch.Tensor, fmt: MiniFloat, seed: int | None) -> torch.Tensor:
    largest = float(np.float32(fmt.max))
    clamped = torch.clamp(x, -largest, largest)
    magnitude = clamped.abs()
    normal = float(np.float32(fmt.smallest_normal))
    exponent = _floor_log2(torch.clamp(magnitude, min=normal))
    quantum = _pow2(exponent - fmt.mant_bits)
    result = _round(clamped / quantum, seed, fmt.rounding) * quantum
    if not fmt.has_subnormals:
        result = torch.where(magnitude < normal, clamped * 0.0, result)
    if fmt.has_inf:
        result = torch.where(torch.isinf(x), x, result)
    return torch.where(torch.isnan(x), x, result)


def _power_of_two(x: torch.Tensor, fmt: Pow2, seed: int | None) -> torch.Tensor:
    low, high = 2.0 ** (fmt.exp_min - 1), 2.0 ** (fmt.exp_max + 1)
    magnitude = torch.clamp(x.abs(), low, high)
    magnitude = torch.where(torch.isnan(x), torch.ones_like(x), magnitude)
    floor_exp = _floor_log2(magnitude)
    mantissa = magnitude / _pow2(floor_exp)
    if seed is None:
        exponent = floor_exp + (mantissa > float(SQRT2_F32)).to(torch.int32)
    else:
        exponent = floor_exp + _round(mantissa - 1.0, seed).to(torch.int32)
    power = _pow2(torch.clamp(exponent, fmt.exp_min, fmt.exp_max))
    if fmt.zero:
        power = torch.where(exponent < fmt.exp_min, torch.zeros_like(power), power)
    sign = torch.where(x < 0, -1.0, 1.0)
    return torch.where(torch.isnan(x), x, sign * power + 0.0)


def _two_powers(x: torch.Tensor, fmt: APoT, seed: int | None) -> torch.Tensor:
    """The nearest level, ties to the smaller magnitude, in float64 as the reference."""
    if seed is not None:
        raise ValueError("two-term power-of-two weights round to the nearest level only")
    levels = torch.from_numpy(np.array(fmt.levels)).to(x.device)
    magnitude = torch.clamp(x.abs().to(torch.float64), max=float(levels[-1]))
    magnitude = torch.where(torch.isnan(x), torch.zeros_like(magnitude), magnitude)
    above = torch.clamp(torch.bucketize(magnitude, levels), 1, len(levels) - 1)
    low, high = levels[above - 1], levels[above]
    nearest = torch.where(2 * magnitude > low + high, high, low).to(torch.float32)
    sign = torch.where(x < 0, -1.0, 1.0)
    return torch.where(torch.isnan(x), x, sign * nearest + 0.0)


_QUANTIZERS = {DFP: _dfp, MiniFloat: _minifloat, Pow2: _power_of_two, APoT: _two_powers}


def quantize(x: torch.Tensor, fmt: Format, seed: int | None = None) -> torch.Tensor:
    """`fmt.quantize` on a float32 tensor, without gradient."""
    x = x.to(torch.float32)
    if x.is_cuda and not isinstance(fmt, APoT):
        return _on_gpu(x, fmt, seed)
    if seed is None and _fused(fmt):
        return _without_nan(
            x,
            torch.fake_quantize_per_tensor_affine(x, 2.0**-fmt.fl, 0, fmt.code_min, fmt.code_max),
        )
    return _QUANTIZERS[type(fmt)](x, fmt, seed)


def _fused(fmt: Format) -> bool:
    """Whether torch's fake-quantize op is exactly `fmt.quantize`: DFP rounding to nearest
    even, with a scale and its inverse that are normal float32 numbers."""
    return isinstance(fmt, DFP) and fmt.rounding == "even" and abs(fmt.fl) <= 126


def _without_nan(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """torch's fake-quantize turns NaN into the smallest code; the reference keeps NaN."""
    if bool(torch.isnan(x).any()):
        return torch.where(torch.isnan(x), x, quantized)
    return quantized


def _on_gpu(x: torch.Tensor, fmt: Format, seed: int | None) -> torch.Tensor:
    """rcompile's CUDA kernel on a CUDA tensor, through DLPack (no copy)."""
    import cupy

    from rcompile.cuda_ops import quantize_cupy

    with cupy.cuda.Device(x.device.index or 0):
        return torch.from_dlpack(quantize_cupy(fmt, cupy.from_dlpack(x.detach()), seed))


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fmt, seed):
        ctx.save_for_backward(x)
        ctx.limits = (fmt.min, fmt.max)
        return quantize(x.detach(), fmt, seed)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        low, high = ctx.limits
        inside = (x >= low) & (x <= high)
        return grad * inside.to(grad.dtype), None, None


def fake_quantize(x: torch.Tensor, fmt: Format, seed: int | None = None) -> torch.Tensor:
    """Quantize in the forward pass; pass the gradient straight through inside the range."""
    return _StraightThrough.apply(x, fmt, seed)


def per_channel(x: torch.Tensor, formats: tuple[Format, ...], axis: int, seed=None) -> torch.Tensor:
    """Quantize each slice along `axis` with its own format (one format: the whole tensor).
    Per-channel DFP and power-of-two sets run vectorised: the same arithmetic, with each
    channel's constants broadcast along `axis`."""
    if len(formats) == 1:
        return fake_quantize(x, formats[0], seed)
    alike = len({(type(f), getattr(f, "rounding", "")) for f in formats}) == 1
    if seed is None and all(map(_fused, formats)) and len({(f.bw, f.signed) for f in formats}) == 1:
        return _FusedChannels.apply(x, formats, axis)
    if alike and isinstance(formats[0], DFP | Pow2) and seed is None:
        return _Channels.apply(x, formats, axis)
    slices = torch.unbind(x, dim=axis)
    seeds = [None if seed is None else seed + i for i in range(len(slices))]
    quantized = [fake_quantize(s, f, k) for s, f, k in zip(slices, formats, seeds, strict=True)]
    return torch.stack(quantized, dim=axis)


def _along(values: list[float], x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = len(values)
    return torch.tensor(np.array(values, dtype=np.float32)).reshape(shape).to(x.device)


def _channels_dfp(x: torch.Tensor, formats: tuple[DFP, ...], axis: int) -> torch.Tensor:
    up = _along([2.0**f.fl for f in formats], x, axis)
    down = _along([2.0**-f.fl for f in formats], x, axis)
    low = _along([float(np.float32(f.code_min)) for f in formats], x, axis)
    high = _along([float(np.float32(f.code_max)) for f in formats], x, axis)
    return torch.clamp(_MODES[formats[0].rounding](x * up), low, high) * down + 0.0


def _channels_pow2(x: torch.Tensor, formats: tuple[Pow2, ...], axis: int) -> torch.Tensor:
    exp_min = _along([f.exp_min for f in formats], x, axis).to(torch.int32)
    exp_max = _along([f.exp_max for f in formats], x, axis).to(torch.int32)
    magnitude = torch.clamp(x.abs(), _pow2(exp_min - 1), _pow2(exp_max + 1))
    magnitude = torch.where(torch.isnan(x), torch.ones_like(x), magnitude)
    floor_exp = _floor_log2(magnitude)
    exponent = floor_exp + (magnitude / _pow2(floor_exp) > float(SQRT2_F32)).to(torch.int32)
    power = _pow2(torch.minimum(torch.maximum(exponent, exp_min), exp_max))
    zero = _along([float(f.zero) for f in formats], x, axis) > 0
    power = torch.where(zero & (exponent < exp_min), torch.zeros_like(power), power)
    sign = torch.where(x < 0, -1.0, 1.0)
    return torch.where(torch.isnan(x), x, sign * power + 0.0)


class _Channels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, formats, axis):
        ctx.save_for_backward(x)
        ctx.limits = (
            _along([f.min for f in formats], x, axis),
            _along([f.max for f in formats], x, axis),
        )
        quantize_all = _channels_dfp if isinstance(formats[0], DFP) else _channels_pow2
        return quantize_all(x.detach().to(torch.float32), formats, axis)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        low, high = ctx.limits
        return grad * ((x >= low) & (x <= high)).to(grad.dtype), None, None


class _FusedChannels(torch.autograd.Function):
    """Per-channel DFP of one width through torch's per-channel fake-quantize op."""

    @staticmethod
    def forward(ctx, x, formats, axis):
        ctx.save_for_backward(x)
        ctx.limits = (
            _along([f.min for f in formats], x, axis),
            _along([f.max for f in formats], x, axis),
        )
        x = x.detach().to(torch.float32)
        scales = torch.tensor([2.0**-f.fl for f in formats], dtype=torch.float32, device=x.device)
        zeros = torch.zeros(len(formats), dtype=torch.int32, device=x.device)
        fmt = formats[0]
        return _without_nan(
            x,
            torch.fake_quantize_per_channel_affine(
                x, scales, zeros, axis, fmt.code_min, fmt.code_max
            ),
        )

    backward = _Channels.backward
