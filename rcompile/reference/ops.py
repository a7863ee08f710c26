"""`onnx.reference` kernels for the `ai.rcompile` ops: the three quantizers, by their NumPy
references, and `IntegerLayer`, one planned layer executed in integer arithmetic."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from rcompile.formats.exact import F32
from rcompile.onnx_ops import DOMAIN, format_of
from rcompile.reference.layer import LayerSpec, run_layer

REFERENCE_DOMAIN = "ai.rcompile.reference"


class _Quantizer(OpRun):
    """A quantizer node run by its format's NumPy reference."""

    op_domain = DOMAIN

    def _run(self, x, **_attributes):
        return (format_of(self.onnx_node).quantize(x),)


class QuantizeDFP(_Quantizer):
    pass


class QuantizeMiniFloat(_Quantizer):
    pass


class QuantizePow2(_Quantizer):
    pass


QUANTIZERS = (QuantizeDFP, QuantizeMiniFloat, QuantizePow2)


def integer_layer_kernel(specs: dict[str, LayerSpec], codes: dict | None = None) -> type[OpRun]:
    """The `IntegerLayer` kernel for these layers (looked up by node name); with `codes`, it
    keeps there each layer's integer tensors of its last run, by node name."""

    class IntegerLayer(OpRun):
        op_domain = REFERENCE_DOMAIN

        def _run(self, *inputs, **_attributes):
            spec = specs[self.onnx_node.name]
            output, integers = run_layer(
                spec, list(inputs), _float_op(spec.node.SerializeToString())
            )
            if codes is not None and integers is not None:
                codes[self.onnx_node.name] = integers
            return (output,)

    return IntegerLayer


@cache
def _float_op(serialized: bytes):
    """The layer's op run by `onnx.reference` in float32 (for layers without integer codes)."""
    node = onnx.NodeProto.FromString(serialized)
    node.domain, node.name = "", "layer"
    count = len(node.input)
    inputs = [
        onnx.helper.make_tensor_value_info(f"i{k}", onnx.TensorProto.FLOAT, None)
        for k in range(count)
    ]
    node.input[:] = [f"i{k}" if name else "" for k, name in enumerate(node.input)]
    node.output[:] = ["y"]
    graph = onnx.helper.make_graph(
        [node],
        "layer",
        inputs,
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    evaluator = ReferenceEvaluator(onnx.helper.make_model(graph))

    def run(*values):
        feeds = {f"i{k}": np.asarray(v, F32) for k, v in enumerate(values)}
        return evaluator.run(None, feeds)[0].astype(F32)

    return run
