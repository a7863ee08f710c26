"""Import: read an .onnx file into a checked, shape-inferred model at rcompile's opset.

The one place, with the exporter, that reads protobuf from disk. Models converted from
Caffe are often at opset 7 to 9; onnx's version converter brings them to `OPSET`.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import version_converter

from rcompile.errors import ModelImportError, warn
from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.passes.constants_as_initializers import constants_as_initializers
from rcompile.passes.fold_batchnorm import fold_batchnorm
from rcompile.passes.name_nodes import name_nodes

MIN_OPSET = 7
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}
# The op domains onnxruntime's CPU provider runs (its contrib ops included).
RUNTIME_DOMAINS = frozenset(("", "ai.onnx", "ai.onnx.ml", "com.microsoft"))


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read, check, convert to OPSET, infer shapes and fold BatchNormalization."""
    return prepare_model(read_model(path), str(path))


def read_model(path: str | Path) -> onnx.ModelProto:
    """The model in the file as it is (a compiled model is run as written)."""
    path = Path(path)
    if path.is_dir():
        raise ModelImportError(f"{path}: is a folder; give the .onnx file")
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelImportError(f"{path}: not an ONNX model (the file is empty)")
    try:
        model = onnx.load(str(path))
    except onnx.checker.ValidationError as error:  # external data missing or outside the folder
        raise ModelImportError(
            f"{path}: cannot read the model's external data ({_first_line(error)})"
        ) from error
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        raise ModelImportError(f"{path}: not an ONNX model ({_first_line(error)})") from error
    return model


def prepare_model(model: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """Check and normalise a model already in memory (see `load_model`): named nodes, OPSET,
    inferred shapes, Constant nodes as initializers, BatchNormalization folded."""
    if not model.graph.node:
        raise ModelImportError(f"{label}: not an ONNX model (it has no graph nodes)")
    model = _check(model, label)
    _check_domains(model, label)
    model = _set_ir_version(_convert_opset(model, label), label)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    _require_float_input(model, label)
    named = name_nodes(model).model
    return fold_batchnorm(constants_as_initializers(named).model).model


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelImportError("model imports no ONNX opset")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old IR versions list both)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _check(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """The model, checked. Declared shapes that shape inference contradicts (onnxruntime
    only warns about them) are dropped with a warning, and the model checked again."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return model
    except onnx.shape_inference.InferenceError as error:
        loosened = _without_declared_shapes(model)
        try:
            onnx.checker.check_model(loosened, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
            raise ModelImportError(f"{label}: invalid ONNX model ({_first_line(error)})") from error
        warn(
            f"{label}: the declared shapes of its outputs and intermediate values contradict "
            f"its graph ({_first_line(error)}); rcompile uses the inferred ones"
        )
        return loosened
    except onnx.checker.ValidationError as error:
        raise ModelImportError(f"{label}: invalid ONNX model ({_first_line(error)})") from error


def _without_declared_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its outputs' declared shapes and its intermediate value_info replaced
    by what shape inference finds (element types kept)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.value_info[:]
    for output in result.graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(result)


def _check_domains(model: onnx.ModelProto, label: str) -> None:
    """Every op's domain is one onnxruntime runs or a function of the model defines."""
    local = {(function.domain, function.name) for function in model.functions}
    for node in model.graph.node:
        if node.domain not in RUNTIME_DOMAINS and (node.domain, node.op_type) not in local:
            raise ModelImportError(
                f"{label}: op {node.op_type} of domain {node.domain} (node {node.name or '?'}) "
                "is not an ONNX op and onnxruntime has no kernel for it"
            )


def _convert_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    version = default_opset(model)
    if version == OPSET:
        return model
    if not MIN_OPSET <= version <= onnx.defs.onnx_opset_version():
        raise ModelImportError(
            f"{label}: opset {version} is not supported; rcompile reads opsets {MIN_OPSET} to "
            f"{onnx.defs.onnx_opset_version()}"
        )
    try:
        converted = version_converter.convert_version(model, OPSET)
    except Exception as error:  # the converter raises bare RuntimeError and others
        raise ModelImportError(
            f"{label}: cannot convert opset {version} to {OPSET} ({_first_line(error)})"
        ) from error
    return converted


def _set_ir_version(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Declare IR_VERSION, the one OPSET and model-local function overloads need: the version
    converter keeps older ones, and onnx writes newer ones than onnxruntime 1.31 reads (13)."""
    if model.ir_version == IR_VERSION:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.ir_version = IR_VERSION
    try:
        onnx.checker.check_model(result)
    except onnx.checker.ValidationError as error:
        raise ModelImportError(
            f"{label}: uses features of IR version {model.ir_version} that IR version "
            f"{IR_VERSION} lacks ({_first_line(error)})"
        ) from error
    return result


def _require_float_input(model: onnx.ModelProto, label: str) -> None:
    """At least one float32 input, and no input of another float type: rcompile quantizes
    FP32 models."""
    inputs = graph_inputs(model)
    for value in inputs:
        element = value.type.tensor_type.elem_type
        if element in FLOAT_TYPES and element != onnx.TensorProto.FLOAT:
            kind = onnx.TensorProto.DataType.Name(element).lower()
            raise ModelImportError(
                f"{label}: input {value.name!r} is {kind}; rcompile quantizes FP32 models "
                "(convert the model to float32 first)"
            )
    if not any(value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for value in inputs):
        names = ", ".join(value.name for value in inputs) or "none"
        raise ModelImportError(f"{label}: no floating-point input to calibrate (inputs: {names})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
