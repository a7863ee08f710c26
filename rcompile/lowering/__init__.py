"""Lowering: one plan, two ONNX forms of it.

`sim` (the default) computes the reference datapath's bits under every onnxruntime
optimisation level: it leaves onnxruntime no integer kernel to fuse (their sums and rounding
depend on the CPU) and computes each layer in float32 only where float32 holds every partial
sum exactly, wider elsewhere (`wide_layers`). `qdq` is plain standard
QuantizeLinear/DequantizeLinear for deployment on any QDQ runtime, fast, and as exact as that
runtime's fused kernels: `rcompile verify` measures how far.
"""

from __future__ import annotations

import onnx

from rcompile.lowering.fusion_barriers import fusion_barriers
from rcompile.lowering.plain_pools import plain_pools
from rcompile.lowering.qdq import inline_quantizers, integer_clamps
from rcompile.lowering.rewrite import QDQ, SIM, rewrite
from rcompile.lowering.sim import arithmetic_quantizers, dequantize_by_arithmetic
from rcompile.lowering.wide_layers import wide_layers
from rcompile.passes import PassResult
from rcompile.passes.repeated_constants import repeated_constants
from rcompile.passes.share_constants import share_constants
from rcompile.plan import Plan

TARGETS = ("sim", "qdq")


def lower(model: onnx.ModelProto, plan: Plan, target: str = "sim") -> PassResult:
    """`model` with `plan` applied, in the form of `target`."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    result = rewrite(model, plan, SIM if target == "sim" else QDQ)
    if target == "qdq":
        inlined = inline_quantizers(result.model).model
        lowered = integer_clamps(inlined).model
    else:
        arithmetic = dequantize_by_arithmetic(arithmetic_quantizers(result.model).model).model
        wide = wide_layers(arithmetic, plan).model
        lowered = plain_pools(fusion_barriers(wide).model).model
    shared = share_constants(lowered).model
    if target == "sim":
        shared = repeated_constants(shared).model
    return PassResult(shared, result.modified)
