"""The pass that makes a rewritten model `qdq`: standard ops only, for runtimes that know no
model-local functions. Every quantizer becomes its body with its constants folded; a DFP
quantizer of up to 16 bits is then a QuantizeLinear/DequantizeLinear pair that QDQ runtimes
fuse into integer kernels."""

from __future__ import annotations

import onnx

from rcompile.onnx_ops import DOMAIN
from rcompile.onnx_ops.specialise import specialise
from rcompile.passes import PassResult


def inline_quantizers(model: onnx.ModelProto) -> PassResult:
    """`model` with its quantizer nodes replaced by their bodies and `ai.rcompile` dropped."""
    if not any(node.domain == DOMAIN for node in model.graph.node):
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    specialise(result)
    return PassResult(result, True)
