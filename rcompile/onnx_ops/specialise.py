"""Quantizer nodes replaced by their function bodies with the attributes bound.

onnxruntime inlines a model-local function at every session it builds and then folds the
constants the body derives from the node's attributes. The search builds a session per
candidate, so its evaluation form carries the folded bodies instead: onnxruntime folds each
(op, overload, attributes) once, in a one-node model at its basic level, and the nodes it
leaves are spliced in. The values are the same bit for bit; the sessions build faster.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import helper

from rcompile.onnx_ops.builder import DOMAIN, IR_VERSION, OPSET


@dataclass(frozen=True)
class FoldedBody:
    """A quantizer's body with its input named `x` and its output `y`; `constants` are the
    folded values, named as the nodes read them."""

    nodes: tuple[onnx.NodeProto, ...]
    constants: tuple[onnx.TensorProto, ...]


def specialise(model: onnx.ModelProto) -> None:
    """Replace every quantizer node of `model` by its folded body, in place, and drop the
    functions. A body's values are named after its node; its first node keeps the node's
    name. Constants are shared by the nodes of one key."""
    by_key = {(f.name, f.overload): f for f in model.functions if f.domain == DOMAIN}
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    constants: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        attributes = tuple(sorted((a.name, helper.get_attribute_value(a)) for a in node.attribute))
        function = by_key[(node.op_type, node.overload)]
        body = _folded(function.SerializeToString(), node.op_type, node.overload, attributes)
        prefix = f"{node.op_type}_{node.overload}_" + "_".join(
            f"{k}{_text(v)}" for k, v in attributes
        )
        for constant in body.constants:
            constants.setdefault(f"{prefix}/{constant.name}", constant)
        nodes.extend(_renamed(body, node, prefix))
    del graph.node[:]
    graph.node.extend(nodes)
    for name, constant in constants.items():
        copy = onnx.TensorProto()
        copy.CopyFrom(constant)
        copy.name = name
        graph.initializer.append(copy)
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(kept)
    imports = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)


def _renamed(body: FoldedBody, node: onnx.NodeProto, prefix: str) -> list[onnx.NodeProto]:
    """The body's nodes for `node`: `x` and `y` become its input and output, constants
    the shared names, other values names of its own; the first node keeps its name."""
    constant_names = {constant.name for constant in body.constants}

    def name(value: str) -> str:
        if value == "x":
            return node.input[0]
        if value == "y":
            return node.output[0]
        if value in constant_names:
            return f"{prefix}/{value}"
        return f"{node.name}/{value}"

    renamed = []
    for index, part in enumerate(body.nodes):
        copy = onnx.NodeProto()
        copy.CopyFrom(part)
        copy.name = node.name if index == 0 else f"{node.name}/{index}"
        copy.input[:] = [name(value) if value else "" for value in part.input]
        copy.output[:] = [name(value) for value in part.output]
        renamed.append(copy)
    return renamed


@cache
def _folded(
    function: bytes, op_type: str, overload: str, attributes: tuple[tuple[str, int | bytes], ...]
) -> FoldedBody:
    proto = onnx.FunctionProto.FromString(function)
    node = helper.make_node(op_type, ["x"], ["y"], domain=DOMAIN, **dict(attributes))
    node.overload = overload
    value = onnx.TensorProto.FLOAT
    model = helper.make_model(
        helper.make_graph(
            [node],
            "quantizer",
            [helper.make_tensor_value_info("x", value, None)],
            [helper.make_tensor_value_info("y", value, None)],
        ),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=[proto],
        ir_version=IR_VERSION,
    )
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        folded = onnx.load(options.optimized_model_filepath)
    return FoldedBody(tuple(folded.graph.node), tuple(folded.graph.initializer))


def _text(value: int | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
