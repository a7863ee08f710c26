"""Input shapes the user gives (`--input-shape x=1,3,960,960`) for models whose inputs have
dynamic sizes, so that every layer's shape, and its MACs, can be inferred."""

from __future__ import annotations

import re

import onnx

from rcompile.errors import ModelImportError, UserError
from rcompile.importer import graph_inputs

_GIVEN = re.compile(r"([^=]+)=([0-9]+(?:,[0-9]+)*)")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`name=1,3,960,960` as (name, dims)."""
    match = _GIVEN.fullmatch(text.strip())
    if match is None:
        raise UserError(f"--input-shape {text!r}: expected NAME=D1,D2,... (e.g. x=1,3,960,960)")
    return match[1], tuple(int(d) for d in match[2].split(","))


def with_input_shapes(model: onnx.ModelProto, given: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of `model` whose named inputs have the given fixed shapes, shapes inferred
    again through the graph."""
    if not given:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    inputs = {value.name: value for value in graph_inputs(result)}
    for name, dims in given.items():
        if name not in inputs:
            raise UserError(f"--input-shape: the model has no input {name!r} ({', '.join(inputs)})")
        shape = inputs[name].type.tensor_type.shape
        if len(shape.dim) != len(dims):
            rank = len(shape.dim)
            raise UserError(
                f"--input-shape {name}: {len(dims)} dimensions given, the input has {rank}"
            )
        for dim, size in zip(shape.dim, dims, strict=True):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise UserError(
                    f"--input-shape {name}: dimension {dim.dim_value} is fixed, {size} given"
                )
            dim.Clear()
            dim.dim_value = size
    del result.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(result, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise ModelImportError(
            f"--input-shape: the shapes given do not fit the graph ({first})"
        ) from None
