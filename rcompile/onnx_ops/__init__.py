"""The quantizer ops `QuantizeDFP`, `QuantizeMiniFloat` and `QuantizePow2` of the domain
`ai.rcompile`, as model-local ONNX functions built from standard ops only.

A model that carries these functions runs on stock onnxruntime with nothing registered, and
Netron shows each quantizer as one named node with its format's parameters as attributes.
"""

from __future__ import annotations

import onnx
from onnx import helper

from rcompile.formats import DFP, Format, MiniFloat, Pow2
from rcompile.onnx_ops import dfp, minifloat, pow2
from rcompile.onnx_ops.builder import DOMAIN, DOMAIN_VERSION, IR_VERSION, OPSET

__all__ = [
    "DOMAIN",
    "DOMAIN_VERSION",
    "IR_VERSION",
    "OPSET",
    "bound_body",
    "format_of",
    "function_key",
    "functions_for",
    "quantizer_node",
    "single_quantizer_model",
]

# Each module gives NAME, overload(fmt), attributes(fmt) and build(overload, bound=None).
_OPS = {DFP: dfp, MiniFloat: minifloat, Pow2: pow2}
_BY_NAME = {module.NAME: module for module in _OPS.values()}


def function_key(fmt: Format) -> tuple[str, str]:
    """The (op type, overload) that quantizes to `fmt`."""
    if type(fmt) not in _OPS:
        raise TypeError(f"{fmt.name} has no quantizer op: it is for weights, quantized offline")
    module = _OPS[type(fmt)]
    return module.NAME, module.overload(fmt)


def quantizer_node(
    fmt: Format, source: str, target: str, name: str, form: str = "default"
) -> onnx.NodeProto:
    """A node that quantizes `source` to `fmt` and writes `target`. `form` picks among a DFP
    quantizer's equivalent bodies (see `dfp.overload`); other families have one."""
    op_type, overload = function_key(fmt)
    if isinstance(fmt, DFP):
        overload = dfp.overload(fmt, form)
    attributes = _OPS[type(fmt)].attributes(fmt)
    node = helper.make_node(op_type, [source], [target], name=name, domain=DOMAIN, **attributes)
    node.overload = overload
    return node


def format_of(node: onnx.NodeProto) -> Format:
    """The format a quantizer node's attributes describe (the inverse of `quantizer_node`)."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    values = {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}
    rounding = values.get("rounding", "even")
    if node.op_type == dfp.NAME:
        return DFP.of(values["bw"], values["fl"], bool(values["signed"]), rounding)
    if node.op_type == minifloat.NAME:
        return MiniFloat(
            values["exp_bits"],
            values["mant_bits"],
            values["variant"],
            rounding,
            values.get("exponent_bias"),  # absent in files of earlier builds: the standard
        )
    return Pow2(values["exp_min"], values["exp_max"], bool(values["zero"]))


def functions_for(nodes: list[onnx.NodeProto]) -> list[onnx.FunctionProto]:
    """The function definitions that quantizer `nodes` need, each once, in a fixed order."""
    keys = sorted({(node.op_type, node.overload) for node in nodes if node.domain == DOMAIN})
    return [_BY_NAME[name].build(overload) for name, overload in keys]


def bound_body(
    op_type: str, overload: str, attributes: dict[str, int | bytes]
) -> onnx.FunctionProto:
    """The body of one quantizer node with these attribute values, the constants derived
    from them folded (Constant nodes hold what the remaining nodes read)."""
    return _BY_NAME[op_type].build(overload, attributes)


def single_quantizer_model(formats: list[Format]) -> onnx.ModelProto:
    """A model with one float input `x` and one output per format, `y0`, `y1`, ...

    Useful to run the ONNX functions on their own (the tests and benchmarks do).
    """
    nodes = [quantizer_node(fmt, "x", f"y{i}", f"quantize_{i}") for i, fmt in enumerate(formats)]
    value = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "quantizers",
        [helper.make_tensor_value_info("x", value, ["n"])],
        [helper.make_tensor_value_info(f"y{i}", value, ["n"]) for i in range(len(formats))],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        functions=functions_for(nodes),
        ir_version=IR_VERSION,
    )
