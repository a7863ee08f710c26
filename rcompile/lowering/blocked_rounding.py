"""DFP rounding with ops that onnxruntime runs in its blocked layout (sim models and the
search's evaluation form). Each is exact float32 arithmetic on every backend: additions of
exact values, and a product by a power of two (with or without a fused multiply-add).

onnxruntime's CPU provider runs convolutions in a blocked channel layout (NCHWc) and reorders
a tensor back to the plain layout before every op it cannot run blocked: QuantizeLinear,
DequantizeLinear and a Clip that is not a convolution's activation among them. On a
depthwise network those reorders and passes cost as much as the convolutions. This form
quantizes to DFP with ops it keeps blocked, two ways.

In general, `Clip(low, high) -> BatchNormalization(+M) -> BatchNormalization(-M)` with
M = 1.5 * 2**23 steps. The float32 numbers within 2**22 steps of M are exactly the multiples
of the step, so adding M rounds a clipped value to the grid, half to even as QuantizeLinear
does, and subtracting M again is exact; zero comes out +0. onnxruntime fuses the Clip into a
convolution before it as its activation. The additions are 1x1 depthwise convolutions
(weight 1, bias +-M), which it keeps blocked and which add their bias once. Not
BatchNormalizations: onnxruntime 1.20 computes 1/sqrt(variance) inexactly on AVX-512 CPUs
(1.0000001 for variance 1), so its x + M rounded ties the wrong way.

A convolution's output clipped below at 0, and above at an even code, takes one pass instead
of two: `HardSigmoid(alpha, beta) -> Conv(weight S, bias -beta * S) -> Relu`
with alpha = 2**-24 / step, beta = 1 - high / step * 2**-24 and S = 2**24 * step.
HardSigmoid computes min(1, max(0, alpha * x + beta)): alpha * x is the value in units of
2**-24 exactly, and the float32 numbers in [0.5, 1] are exactly the multiples of 2**-24, so
adding beta rounds to a whole code, half to even (beta is an even number of units when the
code of `high` is even; an odd one would round ties to odd codes), and the bound 1 is the
code of `high`. onnxruntime fuses the HardSigmoid into the convolution as its activation.
The depthwise convolution turns the result back into the value exactly (a power-of-two
weight and an exact difference), and its Relu, fused into it, clips the codes below 0 (which came
out rounded on finer grids, but negative all the same).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rcompile.formats import DFP
from rcompile.graph import Names

SIGNIFICAND_BITS = 23
UNIT_BITS = SIGNIFICAND_BITS + 1
# Clipped values must stay within 2**22 steps of zero; 16 bits keeps well inside.
MAX_BW = 16

# A tensor's channels: their count (axis 1) and the number of spatial axes after them.
Channels = tuple[int, int]


def from_zero(step: float, low: float, high: float) -> bool:
    """Whether a convolution's output takes the one-pass form, which ends in a Relu: clipped
    below at 0 and above at an even code."""
    return low == 0 and (high / step) % 2 == 0


def fits(fmt: object) -> bool:
    """Whether a quantizer to `fmt` can take this form: a DFP format of at most 16 bits that
    rounds half to even (as float32 addition does), whose constants (M, alpha and S) are
    normal float32 numbers."""
    if not isinstance(fmt, DFP) or fmt.bw > MAX_BW or fmt.rounding != "even":
        return False
    return fmt.fl - UNIT_BITS >= -126 and fmt.fl - SIGNIFICAND_BITS <= 126


class BlockedRounding:
    """Emits the form's nodes into one graph, sharing the depthwise convolutions' constants."""

    def __init__(self, graph: onnx.GraphProto, names: Names) -> None:
        self.graph = graph
        self.names = names
        self.constants: dict[tuple[tuple[int, ...], float], str] = {}

    def nodes(
        self,
        step: float,
        low: float,
        high: float,
        source: str,
        target: str,
        name: str,
        channels: Channels,
        after_convolution: bool = False,
    ) -> list[onnx.NodeProto]:
        """Quantize `source` (`channels`: the count on axis 1 and the number of spatial axes)
        to the multiples of `step` in [low, high], all of them multiples of `step` too, and
        write `target`. `after_convolution`: a convolution alone produces and reads `source`,
        so it can take an activation."""
        if after_convolution and from_zero(step, low, high):
            return self._codes_from_zero(step, high, source, target, name, channels)
        shift = 1.5 * math.ldexp(step, SIGNIFICAND_BITS)
        bounds = [self._constant((), bound) for bound in (low, high)]
        clipped = self.names.fresh(f"{target}_clipped")
        shifted = self.names.fresh(f"{target}_shifted")
        return [
            helper.make_node("Clip", [source, *bounds], [clipped], name=self.names.fresh(name)),
            self._affine(clipped, shifted, 1.0, shift, channels, f"{name}_round"),
            self._affine(shifted, target, 1.0, -shift, channels, f"{name}_unshift"),
        ]

    def _codes_from_zero(self, step, high, source, target, name, channels):
        unit = math.ldexp(1.0, -UNIT_BITS)
        alpha, beta, scale = unit / step, 1.0 - high / step * unit, step / unit
        codes = self.names.fresh(f"{target}_codes")
        shifted = self.names.fresh(f"{target}_unclamped")
        return [
            helper.make_node(
                "HardSigmoid",
                [source],
                [codes],
                name=self.names.fresh(f"{name}_round"),
                alpha=alpha,
                beta=beta,
            ),
            self._affine(codes, shifted, scale, -beta * scale, channels, f"{name}_values"),
            helper.make_node("Relu", [shifted], [target], name=self.names.fresh(f"{name}_relu")),
        ]

    def _affine(self, source, target, scale: float, bias: float, channels, name: str):
        """x * scale + bias as a 1x1 depthwise convolution."""
        count, spatial = channels
        weight = self._constant((count, 1, *[1] * spatial), scale)
        return helper.make_node(
            "Conv",
            [source, weight, self._constant((count,), bias)],
            [target],
            name=self.names.fresh(name),
            group=count,
        )

    def _constant(self, shape: tuple[int, ...], value: float) -> str:
        """A float32 tensor of `shape` filled with `value`, made once per graph."""
        key = (shape, value)
        if key not in self.constants:
            name = self.names.fresh(f"rounding_constant_{len(self.constants)}")
            tensor = numpy_helper.from_array(np.full(shape, value, np.float32), name)
            self.graph.initializer.append(tensor)
            self.constants[key] = name
        return self.constants[key]
