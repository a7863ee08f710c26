"""The float ops whose bits ONNX leaves to the runtime, run by onnxruntime's CPU kernels.

IEEE 754 rounds +, -, *, / and square roots correctly, so NumPy and onnxruntime agree on
them bit for bit, as on every op that only moves, picks or compares values. exp, tanh, erf,
powers, and the sums inside reductions, pooling averages, normalisations and
interpolations are each runtime's own: on 100,000 normal samples onnxruntime's Sigmoid
differs from NumPy's in 65,101 values, its Exp in 39,573, its Softmax in all. A network
with a SiLU or a Softmax between two layers would then differ from the reference in the
layers' input codes, whatever the integer datapath does. The reference runs these ops with
onnxruntime's CPU kernels, one node at a time, so that it defines the integer datapath
exactly and takes onnxruntime CPU's float32 kernels for the rest; another runtime's (CUDA,
an accelerator's lookup table) may round them otherwise.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.reference.op_run import OpRun

from rcompile.graph import subgraphs

# Ops NumPy computes as onnxruntime does: data movement, picks and comparisons, casts,
# arithmetic that IEEE 754 rounds correctly, and (de)quantization, whose rounding ONNX
# fixes. Control flow stays with onnx.reference too (its bodies' nodes are looked up like
# any other).
EXACT = frozenset(
    (
        *("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat"),
        *("Split", "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad"),
        *("Shape", "Size", "ConstantOfShape", "Constant", "Range", "Cast", "CastLike"),
        *("DepthToSpace", "SpaceToDepth", "ScatterND", "ScatterElements", "Trilu", "OneHot"),
        *("Add", "Sub", "Mul", "Div", "Sqrt", "Neg", "Abs", "Reciprocal", "Sign", "Mod"),
        *("Max", "Min", "Relu", "Clip", "LeakyRelu", "PRelu", "Floor", "Ceil", "Round"),
        *("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or"),
        *("Xor", "Where", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "ArgMax"),
        *("ArgMin", "TopK", "NonZero", "If", "Loop", "Scan", "Dropout"),
        *("QuantizeLinear", "DequantizeLinear"),
    )
)
STANDARD = ("", "ai.onnx")


def runtime_kernels(model: onnx.ModelProto) -> list[type[OpRun]]:
    """`OpRun` classes that run the standard ops of `model` outside `EXACT` (in its bodies
    too) with onnxruntime, at the model's opset."""
    opset = next(o.version for o in model.opset_import if o.domain in STANDARD)
    graphs = [model.graph, *subgraphs(model.graph)]
    op_types = {
        node.op_type
        for graph in graphs
        for node in graph.node
        if node.domain in STANDARD and node.op_type not in EXACT
    }
    return [_kernel(op_type, opset, model.ir_version) for op_type in sorted(op_types)]


def _kernel(op_type: str, opset: int, ir_version: int) -> type[OpRun]:
    def _run(self, *inputs, **_attributes):
        named = list(zip(self.onnx_node.input, inputs, strict=False))
        signature = tuple((name, None if x is None else (x.dtype.str, x.ndim)) for name, x in named)
        session = _session(self.onnx_node.SerializeToString(), signature, opset, ir_version)
        return tuple(session.run(None, {n: x for n, x in named if n and x is not None}))

    return type(op_type, (OpRun,), {"op_domain": "", "_run": _run})


@lru_cache(maxsize=512)
def _session(node_bytes: bytes, signature: tuple, opset: int, ir_version: int):
    """A one-node onnxruntime session for the node, its inputs of the given dtypes and
    ranks; outputs typed by onnx's shape inference."""
    node = onnx.NodeProto()
    node.ParseFromString(node_bytes)
    inputs, seen = [], set()
    for name, kind in signature:
        if not name or kind is None or name in seen:
            continue
        seen.add(name)
        dtype, rank = kind
        element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        inputs.append(helper.make_tensor_value_info(name, element, [None] * rank))
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "runtime_op", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {value.name: value.type for value in inferred.graph.value_info}
    for output in model.graph.output:
        output.type.CopyFrom(types[output.name])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
